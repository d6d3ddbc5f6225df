//! `workload-sim container`: what a container runtime does between the Pod's namespaces and the container's
//! program, run as root inside the container's own mount and pid namespaces (see `images::command`): each
//! volume is bind-mounted at its `mountPath` (read-only when the manifest says so), then the process becomes
//! the Pod's user and runs the program. A `mountPath` that does not exist on the host is made in an overlay
//! (upper layer on a tmpfs) over its nearest existing parent (one overlay per directory, symbolic links
//! followed: `/var/run/a` and `/var/run/b` share one over `/run`), so the host's files are never changed. The
//! program runs by its path, or, where the user cannot reach that path any more, from the file opened
//! before the mounts and the user change. It starts in the container's `workingDir` (default `/`).

use anyhow::Context;
use nix::mount::{MsFlags, mount};
use std::ffi::CString;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

/// A volume (or file) of the host mounted at a path of the container.
#[derive(Debug, Clone, PartialEq)]
pub struct Bind {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

impl Bind {
    /// `SOURCE:TARGET` or `SOURCE:TARGET:ro`, as `--bind` takes it.
    pub fn parse(text: &str) -> Result<Bind, String> {
        let parts: Vec<&str> = text.split(':').collect();
        match parts.as_slice() {
            [source, target] => Ok(Bind { source: source.into(), target: target.into(), read_only: false }),
            [source, target, "ro"] => Ok(Bind { source: source.into(), target: target.into(), read_only: true }),
            _ => Err(format!("{text:?}: expected SOURCE:TARGET or SOURCE:TARGET:ro")),
        }
    }

    pub fn to_arg(&self) -> String {
        let ro = if self.read_only { ":ro" } else { "" };
        format!("{}:{}{ro}", self.source.display(), self.target.display())
    }
}

/// Mounts `binds`, becomes `user` (uid, gid) if given, and runs the file `program` in `workdir` with `argv`
/// (its first item is the program's name as the container's command gives it). Returns only if something
/// failed.
pub fn enter(
    binds: &[Bind],
    scratch: &Path,
    user: Option<(u32, u32)>,
    workdir: &Path,
    program: &Path,
    argv: &[String],
) -> anyhow::Result<std::convert::Infallible> {
    // everything a mount may hide (a volume at /tmp covers the simulator's state directory) is opened first
    // and reached through /proc/self/fd from then on
    let program = find_program(program)?;
    let executable = std::fs::File::open(&program).with_context(|| format!("opening {}", program.display()))?;
    let sources = binds
        .iter()
        .map(|b| std::fs::File::open(&b.source).with_context(|| format!("opening {}", b.source.display())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .context("making the container's mounts private")?;
    std::fs::create_dir_all(scratch)?;
    mount(Some("tmpfs"), scratch, Some("tmpfs"), MsFlags::empty(), Some("mode=700")).context("a tmpfs for overlays")?;
    let scratch_dir = std::fs::File::open(scratch)?;
    let scratch = fd_path(&scratch_dir);
    let mut order: Vec<usize> = (0..binds.len()).collect();
    order.sort_by_key(|i| binds[*i].target.components().count());
    // the directories overlaid so far: a later mount point under one of them is made in that overlay (a
    // second overlay over the same directory would hide the mounts made in the first)
    let mut overlaid: Vec<PathBuf> = vec![];
    for index in order {
        let (bind, source) = (&binds[index], fd_path(&sources[index]));
        let target = &bind.target;
        if !target.exists() {
            let parent = target.ancestors().skip(1).find(|a| a.exists()).unwrap_or(Path::new("/"));
            let real_parent = parent.canonicalize()?;
            if !overlaid.iter().any(|dir| real_parent.starts_with(dir)) {
                overlay(parent, &scratch.join(index.to_string()))?;
                overlaid.push(real_parent);
            }
            if sources[index].metadata()?.is_dir() {
                std::fs::create_dir_all(target)?;
            } else {
                std::fs::create_dir_all(target.parent().unwrap_or(Path::new("/")))?;
                std::fs::write(target, b"")?;
            }
        }
        mount(Some(&source), target, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
            .with_context(|| format!("mounting {} at {}", bind.source.display(), target.display()))?;
        if bind.read_only {
            let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
            mount(None::<&str>, target, None::<&str>, flags, None::<&str>)
                .with_context(|| format!("making {} read-only", target.display()))?;
        }
    }
    if let Some((uid, gid)) = user {
        nix::unistd::setgroups(&[]).context("clearing the groups")?;
        nix::unistd::setgid(nix::unistd::Gid::from_raw(gid)).context("setgid")?;
        nix::unistd::setuid(nix::unistd::Uid::from_raw(uid)).context("setuid")?;
    }
    // the host directory it was started in may be hidden now, and is none of the container's business
    std::env::set_current_dir(workdir).with_context(|| format!("workingDir {}", workdir.display()))?;
    let argv: Vec<CString> = argv.iter().cloned().map(CString::new).collect::<Result<_, _>>()?;
    let env: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| CString::new(format!("{}={}", k.to_str()?, v.to_str()?)).ok())
        .collect();
    // by its path where the user still reaches it (a program that re-runs itself, as HAProxy's master does
    // on a reload, finds itself there), else from the file opened before
    let path = CString::new(program.as_os_str().as_encoded_bytes())?;
    let _ = nix::unistd::execve(&path, &argv, &env);
    nix::unistd::fexecve(executable.as_fd(), &argv, &env).with_context(|| format!("running {}", program.display()))
}

/// The path that reaches what `file` has open, even where a mount now hides its own path.
fn fd_path(file: &std::fs::File) -> PathBuf {
    use std::os::fd::AsRawFd;
    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

/// `program` itself when it is a path, else the first match on `PATH`.
fn find_program(program: &Path) -> anyhow::Result<PathBuf> {
    if program.components().count() > 1 {
        return Ok(program.into());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| anyhow::anyhow!("{} is not on PATH", program.display()))
}

/// Mounts an overlay over `dir` whose writable layer is in `layer` (on the scratch tmpfs), so that mount points
/// can be made in it without touching the host's files.
fn overlay(dir: &Path, layer: &Path) -> anyhow::Result<()> {
    let (upper, work) = (layer.join("upper"), layer.join("work"));
    std::fs::create_dir_all(&upper)?;
    std::fs::create_dir_all(&work)?;
    let options = format!("lowerdir={},upperdir={},workdir={}", dir.display(), upper.display(), work.display());
    mount(Some("overlay"), dir, Some("overlay"), MsFlags::empty(), Some(options.as_str()))
        .with_context(|| format!("an overlay over {} (for a mount point; needs overlayfs)", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_are_read_from_their_argument_and_written_back_the_same() {
        let bind = Bind::parse("/state/pods/1/volumes/config:/etc/haproxy:ro").unwrap();
        assert_eq!(
            bind,
            Bind { source: "/state/pods/1/volumes/config".into(), target: "/etc/haproxy".into(), read_only: true }
        );
        assert_eq!(Bind::parse(&bind.to_arg()).unwrap(), bind);
        assert!(!Bind::parse("/a:/b").unwrap().read_only);
        assert!(Bind::parse("/a").unwrap_err().contains("SOURCE:TARGET"));
    }
}
