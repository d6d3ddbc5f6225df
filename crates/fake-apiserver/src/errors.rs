//! API errors as the real server writes them: `metav1.Status` bodies with reason, code and, for invalid
//! objects, one cause per field (`spec.x: Required value`).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// One field-level validation error, formatted like apimachinery's `field.Error`.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub field: String,
    pub reason: &'static str,
    pub message: String,
}

impl FieldError {
    pub fn required(field: &str) -> Self {
        FieldError { field: field.into(), reason: "FieldValueRequired", message: "Required value".into() }
    }
    pub fn invalid_detail(field: &str, value: String, detail: &str) -> Self {
        FieldError {
            field: field.into(),
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {value}: {detail}"),
        }
    }
    pub fn invalid(field: &str, value: &str, detail: &str) -> Self {
        Self::invalid_detail(field, format!("{value:?}"), detail)
    }
    pub fn unsupported(field: &str, value: &str, supported: &str) -> Self {
        FieldError {
            field: field.into(),
            reason: "FieldValueNotSupported",
            message: format!("Unsupported value: {value}: supported values: {supported}"),
        }
    }
    pub fn duplicate(field: &str, value: &str) -> Self {
        FieldError { field: field.into(), reason: "FieldValueDuplicate", message: format!("Duplicate value: {value}") }
    }
    pub fn too_long(field: &str, max: u64) -> Self {
        FieldError {
            field: field.into(),
            reason: "FieldValueTooLong",
            message: format!("Too long: may not be more than {max} bytes"),
        }
    }
    pub fn too_many(field: &str, actual: usize, max: u64) -> Self {
        FieldError {
            field: field.into(),
            reason: "FieldValueTooMany",
            message: format!("Too many: {actual}: must have at most {max} items"),
        }
    }
    pub fn forbidden(field: &str, detail: &str) -> Self {
        FieldError { field: field.into(), reason: "FieldValueForbidden", message: format!("Forbidden: {detail}") }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// An error answer of the API: HTTP code, reason and message, as a `Status` object.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError { code, reason, message: message.into(), details: None, retry_after: None }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }
    pub fn not_found(resource: &str, name: &str) -> Self {
        let mut e = Self::new(404, "NotFound", format!("{resource} \"{name}\" not found"));
        e.details = Some(json!({"name": name, "kind": resource}));
        e
    }
    pub fn already_exists(resource: &str, name: &str) -> Self {
        let mut e = Self::new(409, "AlreadyExists", format!("{resource} \"{name}\" already exists"));
        e.details = Some(json!({"name": name, "kind": resource}));
        e
    }
    pub fn conflict(resource: &str, name: &str, why: &str) -> Self {
        let mut e =
            Self::new(409, "Conflict", format!("Operation cannot be fulfilled on {resource} \"{name}\": {why}"));
        e.details = Some(json!({"name": name, "kind": resource}));
        e
    }
    /// 422 Invalid: `<Kind>.<group> "<name>" is invalid: [causes]`.
    pub fn invalid(kind_qualified: &str, name: &str, errors: &[FieldError]) -> Self {
        let list: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        let joined = if list.len() == 1 { list[0].clone() } else { format!("[{}]", list.join(", ")) };
        let mut e = Self::new(422, "Invalid", format!("{kind_qualified} \"{name}\" is invalid: {joined}"));
        e.details = Some(json!({
            "name": name,
            "kind": kind_qualified.split('.').next().unwrap_or_default(),
            "causes": errors.iter().map(|e| json!({"reason": e.reason, "message": e.message, "field": e.field})).collect::<Vec<_>>(),
        }));
        e
    }
    /// A path that names no served resource (unknown group, version, plural or subresource).
    pub fn no_such_resource() -> Self {
        Self::new(404, "NotFound", "the server could not find the requested resource")
    }
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }
    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {content_type})"
            ),
        )
    }
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    pub fn status_body(&self) -> Value {
        let mut v = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            v["details"] = d.clone();
        }
        if let Some(r) = self.retry_after {
            v["details"]["retryAfterSeconds"] = json!(r);
        }
        v
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (code, [("content-type", "application/json")], self.status_body().to_string()).into_response();
        if let Some(r) = self.retry_after {
            resp.headers_mut().insert("retry-after", r.to_string().parse().expect("number header"));
        }
        resp
    }
}
