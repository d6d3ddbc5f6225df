//! A Pod's volumes as the kubelet writes them under its directory: ConfigMaps (every key a file, kept up to
//! date as the ConfigMap changes), emptyDirs, and projected volumes (a ServiceAccount token bound to the Pod
//! from the TokenRequest API, ConfigMap keys, the downward API's fields).

use super::*;

impl Kubelet {
    /// A token of the Pod's ServiceAccount, bound to the Pod, from a TokenRequest (as a kubelet gets one).
    pub(super) async fn token(&self, pod: &Pod, expiration: i64, audiences: &[String]) -> anyhow::Result<String> {
        use k8s_openapi::api::authentication::v1::TokenRequest;
        use k8s_openapi::api::core::v1::ServiceAccount;
        let spec = pod.spec.as_ref();
        let account = spec.and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".into());
        let request: TokenRequest = serde_json::from_value(json!({"spec": {"audiences": audiences,
            "expirationSeconds": expiration.max(600),
            "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod.name_any(), "uid": pod.uid()}}}))?;
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let answer = accounts
            .create_token_request(&account, &Default::default(), &request)
            .await
            .map_err(|e| anyhow::anyhow!("the token of ServiceAccount {account}: {e}"))?;
        Ok(answer.status.map(|s| s.token).unwrap_or_default())
    }

    /// Writes the Pod's volumes under `dir`: ConfigMaps (every key a file), emptyDirs, and projected volumes
    /// (a ServiceAccount token, ConfigMap keys, the downward API's fields), as the real API server's
    /// ServiceAccount admission adds one to every Pod (`kube-api-access-*`).
    pub(super) async fn write_volumes(
        &self,
        pod: &Pod,
        dir: &std::path::Path,
    ) -> anyhow::Result<HashMap<String, PathBuf>> {
        let namespace = pod.namespace().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let config_maps: Api<ConfigMap> = Api::namespaced(self.client.clone(), &namespace);
        let config_map = |name: String| {
            let config_maps = config_maps.clone();
            async move {
                let found = config_maps.get(&name).await.map_err(|e| anyhow::anyhow!("ConfigMap {name}: {e}"))?;
                anyhow::Ok(found.data.unwrap_or_default())
            }
        };
        let mut volumes = HashMap::new();
        for volume in spec.volumes.iter().flatten() {
            let path = dir.join(&volume.name);
            std::fs::create_dir_all(&path)?;
            set_mode(&path, 0o777)?;
            if let Some(source) = &volume.config_map {
                write_config_map(&path, &config_map(source.name.clone()).await?)?;
                set_mode(&path, 0o755)?;
            }
            if let Some(projected) = &volume.projected {
                let mut files = std::collections::BTreeMap::new();
                for source in projected.sources.iter().flatten() {
                    if let Some(token) = &source.service_account_token {
                        let audiences: Vec<String> = token.audience.iter().cloned().collect();
                        let value = self.token(pod, token.expiration_seconds.unwrap_or(3607), &audiences).await?;
                        files.insert(token.path.clone(), value);
                    }
                    if let Some(source) = &source.config_map {
                        let data = config_map(source.name.clone()).await?;
                        match &source.items {
                            Some(items) => {
                                for item in items {
                                    let value = data.get(&item.key).cloned().unwrap_or_default();
                                    files.insert(item.path.clone(), value);
                                }
                            }
                            None => files.extend(data),
                        }
                    }
                    if let Some(downward) = &source.downward_api {
                        for item in downward.items.iter().flatten() {
                            let Some(field) = &item.field_ref else {
                                anyhow::bail!("volume {}: only fieldRef is supported by workload-sim", volume.name);
                            };
                            files.insert(item.path.clone(), images::pod_field(pod, &field.field_path)?);
                        }
                    }
                }
                write_config_map(&path, &files)?;
                set_mode(&path, 0o755)?;
            }
            volumes.insert(volume.name.clone(), path);
        }
        Ok(volumes)
    }

    /// Brings every running Pod's ConfigMap volumes up to date with `config_maps` (a real kubelet does it
    /// within about a minute; the simulator's caller decides how often). A ConfigMap that is gone leaves its
    /// files as they were.
    pub fn refresh_volumes(&self, config_maps: &reflector::Store<ConfigMap>) {
        let pods: Vec<Arc<RunningPod>> = self.running.lock().unwrap().values().cloned().collect();
        for pod in pods.iter().filter(|p| !p.stopping.load(Ordering::SeqCst)) {
            for (name, dir) in &pod.config_volumes {
                let Some(config_map) = config_maps.get(&ObjectRef::new(name).within(&pod.namespace)) else { continue };
                match write_config_map(dir, config_map.data.as_ref().unwrap_or(&Default::default())) {
                    Ok(true) => tracing::info!(pod = %pod.name, config_map = %name, "ConfigMap volume updated"),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(pod = %pod.name, config_map = %name, error = %e, "cannot update a ConfigMap volume")
                    }
                }
            }
        }
    }
}

/// Writes each key of `data` as a file of `dir` (each replaced at once, by a rename) and removes files of keys
/// that are gone; says whether anything changed.
pub(super) fn write_config_map(
    dir: &std::path::Path,
    data: &std::collections::BTreeMap<String, String>,
) -> std::io::Result<bool> {
    let mut changed = false;
    for (key, value) in data {
        let file = dir.join(key);
        if std::fs::read(&file).is_ok_and(|on_disk| on_disk == value.as_bytes()) {
            continue;
        }
        let staged = dir.join(format!("..{key}.new"));
        std::fs::write(&staged, value)?;
        set_mode(&staged, 0o644)?;
        std::fs::rename(&staged, &file)?;
        changed = true;
    }
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().to_string();
        if !name.starts_with("..") && !data.contains_key(&name) {
            std::fs::remove_file(dir.join(&name))?;
            changed = true;
        }
    }
    Ok(changed)
}

pub(super) fn set_mode(path: &std::path::Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}
