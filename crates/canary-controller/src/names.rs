//! The operator's vocabulary: every name that more than one module writes or reads (labels, annotations,
//! field managers, the names of the objects it makes, condition types and reasons). One place, so that the
//! caches, the controllers and the agent agree, and no module imports a controller for a name.

/// The label that marks canary Deployments and their pods (always "true").
pub const CANARY_LABEL: &str = "canary";
/// The label that marks baseline Deployments and their pods (always "true"); never `canary`, so that the
/// canary Service does not select them.
pub const BASELINE_LABEL: &str = "canary-baseline";
/// The label of a Kanary's proxy pods (`<kanary>-haproxy`).
pub const PROXY_LABEL: &str = "proxy";
/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label of EndpointSlices naming the controller that manages them.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// Its value on the EndpointSlices this controller writes.
pub const MANAGED_BY: &str = "canary-controller.k8s.wantedly.com";

/// The hash of what the controller last wanted of a child, on the child (compared with the cache).
pub const DESIRED_HASH_ANNOTATION: &str = "canary-controller.io/desired-hash";
/// A person's request to a release (`promote`, `abort`, `retry`, `resume`; `:N` repeats one).
pub const REQUEST_ANNOTATION: &str = "canary.k8s.wantedly.com/request";

/// The field manager of everything the controllers write (server-side apply).
pub const FIELD_MANAGER: &str = "canary-controller";
/// The field manager of the one write to a user's object: the target's images, on promotion (opt-in).
pub const PROMOTION_FIELD_MANAGER: &str = "canary-controller-promotion";
/// The field manager of the status of a Canary that cannot be read.
pub const UNREADABLE_FIELD_MANAGER: &str = "canary-controller-unreadable";

/// The canary Deployment of a target.
pub fn canary_deployment_name(target: &str) -> String {
    format!("{target}-canary")
}

/// The baseline Deployment of a target's release (`traffic.baseline`).
pub fn baseline_deployment_name(target: &str) -> String {
    format!("{target}-baseline")
}

/// The route Services of a Canary's release.
pub fn stable_service_name(canary: &str) -> String {
    format!("{canary}-stable")
}

pub fn canary_service_name(canary: &str) -> String {
    format!("{canary}-canary")
}

pub fn baseline_service_name(canary: &str) -> String {
    format!("{canary}-baseline")
}

/// The address families of EndpointSlices, and the name of the stable route's slice of each: the stable
/// route holds the user's endpoints of both families (an IPv6-only Service has only IPv6 ones; a dual-stack
/// one both). An EndpointSlice's family cannot change, so each has a slice of its own.
pub const FAMILIES: [&str; 2] = ["IPv4", "IPv6"];

/// `<canary>-stable` for IPv4 (the name it always had), `<canary>-stable-ipv6` for IPv6.
pub fn stable_slice_name(canary: &str, family: &str) -> String {
    match family {
        "IPv6" => format!("{}-ipv6", stable_service_name(canary)),
        _ => stable_service_name(canary),
    }
}

/// A Kanary's ConfigMap (the original's name).
pub fn config_name(kanary: &str) -> String {
    format!("{kanary}-config")
}

/// A Kanary's proxy Deployment, its pods' label value and its agents' ServiceAccount (the original's name).
pub fn proxy_name(kanary: &str) -> String {
    format!("{kanary}-haproxy")
}

/// The Canary's condition types, their reasons, and the reasons of its events.
pub mod canary {
    pub mod conditions {
        pub const READY: &str = "Ready";
        /// A release's outcome: True once it succeeded (`kubectl wait --for=condition=Released`).
        pub const RELEASED: &str = "Released";
        /// True once a release was rolled back or aborted (`kubectl wait --for=condition=RolledBack`).
        pub const ROLLED_BACK: &str = "RolledBack";
        pub const TARGET_FOUND: &str = "TargetFound";
        pub const CONFLICT: &str = "Conflict";
    }

    /// Condition reasons and event reasons (an event's reason is a condition's where both say one thing).
    pub mod reasons {
        pub const CANARY_READY: &str = "CanaryReady";
        pub const CANARY_PROGRESSING: &str = "CanaryProgressing";
        pub const TARGET_FOUND: &str = "TargetFound";
        pub const NO_CONFLICT: &str = "NoConflict";
        pub const INVALID_SPEC: &str = "InvalidSpec";
        pub const TARGET_NOT_FOUND: &str = "TargetNotFound";
        pub const UNKNOWN_CONTAINER: &str = "UnknownContainer";
        pub const DEPLOYMENT_NOT_OWNED: &str = "DeploymentNotOwned";
        pub const APPLY_REJECTED: &str = "ApplyRejected";
        pub const TRAFFIC_NOT_SERVED: &str = "TrafficNotServed";
        pub const RELEASE_OBJECT_NOT_OWNED: &str = "ReleaseObjectNotOwned";
        pub const CANARY_CREATED: &str = "CanaryCreated";
        pub const CANARY_UPDATED: &str = "CanaryUpdated";
        pub const PREVIOUS_CANARY_DELETED: &str = "PreviousCanaryDeleted";
        // the release's
        pub const STARTED: &str = "ReleaseStarted";
        pub const WEIGHT_SET: &str = "WeightSet";
        pub const RELEASE_REMOVED: &str = "ReleaseRemoved";
        pub const BASELINE_CREATED: &str = "BaselineCreated";
        pub const BASELINE_REMOVED: &str = "BaselineRemoved";
        pub const PAUSED: &str = "ReleasePaused";
        pub const RESUMED: &str = "ReleaseResumed";
        pub const ANALYSIS_STARTED: &str = "AnalysisStarted";
        pub const ANALYSIS_PASSED: &str = "AnalysisPassed";
        pub const ANALYSIS_FAILED: &str = "AnalysisFailed";
        pub const INCONCLUSIVE: &str = "AnalysisInconclusive";
        pub const EXTENDED: &str = "AnalysisExtended";
        pub const PROMOTING: &str = "Promoting";
        /// The target's images set to the canary's (the promotion's one write to the user's object).
        pub const TARGET_UPDATED: &str = "TargetUpdated";
        pub const SUCCEEDED: &str = "ReleaseSucceeded";
        pub const ROLLED_BACK: &str = "RolledBack";
        pub const ABORTED: &str = "ReleaseAborted";
        pub const RETRIED: &str = "ReleaseRetried";
        pub const UNKNOWN_REQUEST: &str = "UnknownRequest";
        pub const WEBHOOK_PASSED: &str = "WebhookPassed";
        pub const WEBHOOK_FAILED: &str = "WebhookFailed";
    }
}

/// The Kanary's condition types and their reasons.
pub mod kanary {
    pub mod conditions {
        pub const READY: &str = "Ready";
        pub const BACKENDS_READY: &str = "BackendsReady";
        pub const CONFLICT: &str = "Conflict";
        /// Every proxy pod's HAProxy serves the data plane the ConfigMap asks for (as its agent reports).
        pub const DATA_PLANE_SYNCED: &str = "DataPlaneSynced";
    }

    pub mod reasons {
        pub const BACKENDS_READY: &str = "BackendsReady";
        pub const SERVICE_NOT_FOUND: &str = "ServiceNotFound";
        pub const NO_READY_ENDPOINTS: &str = "NoReadyEndpoints";
        pub const SYNCED: &str = "Synced";
        pub const SYNCING: &str = "Syncing";
        pub const NO_PROXY_PODS: &str = "NoProxyPods";
        /// HAProxy refused the configuration of the desired revision (the previous one keeps serving).
        pub const CONFIG_REFUSED: &str = "ConfigRefused";
        pub const PROXY_AVAILABLE: &str = "ProxyAvailable";
        pub const PROXY_PROGRESSING: &str = "ProxyProgressing";
        pub const NO_CONFLICT: &str = "NoConflict";
        pub const INVALID_SPEC: &str = "InvalidSpec";
        pub const PORT_NOT_FOUND: &str = "PortNotFound";
        pub const OBJECT_NOT_OWNED: &str = "ObjectNotOwned";
        // events
        pub const PROXY_CREATED: &str = "ProxyCreated";
        pub const CONFIG_UPDATED: &str = "ConfigUpdated";
    }
}
