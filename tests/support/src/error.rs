//! Kubernetes `Status` errors, shaped like apimachinery's `k8s.io/apimachinery/pkg/api/errors`
//! constructors so that clients decode the same reason, code, message and details.

use serde_json::{json, Map, Value};

/// A failed API call: rendered as a `Status` object (`kind: Status`, `status: Failure`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    /// HTTP status code (also `Status.code`).
    pub code: u16,
    /// `Status.reason`, e.g. `NotFound`, `Conflict`, `Expired`.
    pub reason: &'static str,
    /// `Status.message`.
    pub message: String,
    /// `Status.details`, when the error concerns one object.
    pub details: Option<Value>,
}

/// `plural` for the core group, `plural.group` otherwise: apimachinery's
/// `GroupResource.String()`, used in every object-level error message.
pub(crate) fn qualified(group: &str, plural: &str) -> String {
    if group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    }
}

fn details(group: &str, kind: &str, name: &str) -> Value {
    let mut d = Map::new();
    if !name.is_empty() {
        d.insert("name".into(), Value::from(name));
    }
    if !group.is_empty() {
        d.insert("group".into(), Value::from(group));
    }
    d.insert("kind".into(), Value::from(kind));
    Value::Object(d)
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: String, details: Option<Value>) -> Self {
        ApiError {
            code,
            reason,
            message,
            details,
        }
    }

    /// 404 `services "web" not found`.
    pub fn not_found(group: &str, plural: &str, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", qualified(group, plural)),
            Some(details(group, plural, name)),
        )
    }

    /// 404 for a path that names no resource (`details: {}`, as the apiserver's mux does).
    pub fn no_route() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource".into(),
            Some(json!({})),
        )
    }

    /// 409 AlreadyExists on create.
    pub fn already_exists(group: &str, plural: &str, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", qualified(group, plural)),
            Some(details(group, plural, name)),
        )
    }

    /// 409 Conflict: `Operation cannot be fulfilled on services "web": <why>`.
    pub fn conflict(group: &str, plural: &str, name: &str, why: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                qualified(group, plural)
            ),
            Some(details(group, plural, name)),
        )
    }

    /// 409 Conflict for an update based on a stale resourceVersion.
    pub fn stale(group: &str, plural: &str, name: &str) -> Self {
        Self::conflict(
            group,
            plural,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// 409 Conflict from server-side apply (reason Conflict, one cause per field).
    pub fn apply_conflict(
        group: &str,
        plural: &str,
        name: &str,
        fields: &[(String, String)],
    ) -> Self {
        let mut msg = format!(
            "Apply failed with {} conflict{}:",
            fields.len(),
            if fields.len() == 1 { "" } else { "s" }
        );
        let mut causes = Vec::new();
        for (manager, path) in fields {
            msg.push_str(&format!(" conflict with \"{manager}\": {path}"));
            causes.push(json!({
                "reason": "FieldManagerConflict",
                "message": format!("conflict with \"{manager}\""),
                "field": path,
            }));
        }
        let mut d = details(group, plural, name);
        if let Some(m) = d.as_object_mut() {
            m.insert("causes".into(), Value::Array(causes));
        }
        Self::new(409, "Conflict", msg, Some(d))
    }

    /// 422 Invalid: `Service "web" is invalid: metadata.name: Required value`.
    pub fn invalid(group: &str, kind: &str, name: &str, field: &str, detail: &str) -> Self {
        let gk = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        let mut d = details(group, kind, name);
        if let Some(m) = d.as_object_mut() {
            m.insert(
                "causes".into(),
                json!([{ "reason": "FieldValueInvalid", "message": detail, "field": field }]),
            );
        }
        Self::new(
            422,
            "Invalid",
            format!("{gk} \"{name}\" is invalid: {field}: {detail}"),
            Some(d),
        )
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message.into(), None)
    }

    /// 401 Unauthorized, as the authentication filter answers.
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized".into(), None)
    }

    /// 403 Forbidden with RBAC's wording.
    pub fn forbidden(
        group: &str,
        plural: &str,
        subresource: Option<&str>,
        name: &str,
        verb: &str,
        namespace: Option<&str>,
        user: &str,
    ) -> Self {
        let resource = match subresource {
            Some(s) => format!("{plural}/{s}"),
            None => plural.to_string(),
        };
        let scope = match namespace {
            Some(ns) => format!("in the namespace \"{ns}\""),
            None => "at the cluster scope".to_string(),
        };
        let subject = if name.is_empty() {
            qualified(group, plural)
        } else {
            format!("{} \"{name}\"", qualified(group, plural))
        };
        Self::new(
            403,
            "Forbidden",
            format!(
                "{subject} is forbidden: User \"{user}\" cannot {verb} resource \"{resource}\" in API group \"{group}\" {scope}"
            ),
            Some(details(group, plural, name)),
        )
    }

    /// 405 MethodNotAllowed.
    pub fn method_not_allowed(method: &str) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({method})"),
            Some(json!({})),
        )
    }

    /// 410 Expired (`too old resource version`, or an expired continue token).
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message.into(), None)
    }

    /// 413 RequestEntityTooLarge.
    pub fn too_large() -> Self {
        Self::new(
            413,
            "RequestEntityTooLarge",
            "Request entity too large".into(),
            None,
        )
    }

    /// 415 UnsupportedMediaType for an unknown PATCH or body content type.
    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml ({content_type})"),
            None,
        )
    }

    /// 500 InternalError.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {}", message.into()),
            None,
        )
    }

    /// The `Status` object as JSON.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let (Some(d), Some(m)) = (&self.details, s.as_object_mut()) {
            m.insert("details".into(), d.clone());
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_matches_apiserver_shape() {
        let s = ApiError::not_found("coordination.k8s.io", "leases", "pier").to_status();
        assert_eq!(
            s,
            json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
                   "message":"leases.coordination.k8s.io \"pier\" not found","reason":"NotFound",
                   "details":{"name":"pier","group":"coordination.k8s.io","kind":"leases"},"code":404})
        );
        let s = ApiError::not_found("", "services", "web").to_status();
        assert_eq!(s["details"], json!({"name":"web","kind":"services"}));
    }

    #[test]
    fn forbidden_uses_rbac_wording() {
        let e = ApiError::forbidden(
            "",
            "services",
            Some("status"),
            "web",
            "patch",
            Some("default"),
            "pier",
        );
        assert_eq!(
            e.message,
            "services \"web\" is forbidden: User \"pier\" cannot patch resource \"services/status\" in API group \"\" in the namespace \"default\""
        );
        assert_eq!(e.code, 403);
    }
}
