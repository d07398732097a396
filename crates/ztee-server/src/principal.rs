//! Who is calling, and what they may do.
//!
//! A principal comes out of authentication (an OIDC token or an API key) and carries its tenant
//! and roles. Roles map to permissions through a fixed table; unknown roles grant nothing.

use std::collections::BTreeSet;
use std::fmt;

use serde::Serialize;

/// A permission checked by the gateway before any stage that needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Permission {
    /// Create and use own tenant's sandboxes, run code.
    #[serde(rename = "sandbox:run")]
    SandboxRun,
    /// Everything on sandboxes of the own tenant, including other principals' sandboxes.
    #[serde(rename = "sandbox:admin")]
    SandboxAdmin,
    /// Read the tenant's audit events.
    #[serde(rename = "audit:read")]
    AuditRead,
    /// Decide on actions that policy sent for approval.
    #[serde(rename = "approval:decide")]
    ApprovalDecide,
    /// Operator: manage API keys, see every tenant.
    #[serde(rename = "admin")]
    Admin,
    /// Use the LLM proxy (`/v1/openai`, `/v1/anthropic`).
    #[serde(rename = "llm:chat")]
    LlmChat,
    /// See card numbers restored in model answers instead of `<CREDIT_CARD_n>` placeholders.
    #[serde(rename = "pan:detokenize")]
    PanDetokenize,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SandboxRun => "sandbox:run",
            Self::SandboxAdmin => "sandbox:admin",
            Self::AuditRead => "audit:read",
            Self::ApprovalDecide => "approval:decide",
            Self::Admin => "admin",
            Self::LlmChat => "llm:chat",
            Self::PanDetokenize => "pan:detokenize",
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The roles ztee knows, with the permissions each grants. Role names are what identity providers
/// put in the roles claim and what `ztee apikey create --role` accepts.
pub const ROLES: &[(&str, &[Permission])] = &[
    ("agent", &[Permission::SandboxRun, Permission::LlmChat]),
    (
        "developer",
        &[
            Permission::SandboxRun,
            Permission::SandboxAdmin,
            Permission::LlmChat,
        ],
    ),
    // The only role that sees card numbers in model answers: for the payment operations staff
    // who need them, never for agents. Admin does not include it.
    (
        "pci-operator",
        &[Permission::LlmChat, Permission::PanDetokenize],
    ),
    ("auditor", &[Permission::AuditRead]),
    ("approver", &[Permission::ApprovalDecide]),
    (
        "admin",
        &[
            Permission::SandboxRun,
            Permission::SandboxAdmin,
            Permission::AuditRead,
            Permission::ApprovalDecide,
            Permission::Admin,
            Permission::LlmChat,
        ],
    ),
];

/// Returns `None` for a role ztee does not know.
pub fn role_permissions(role: &str) -> Option<&'static [Permission]> {
    ROLES
        .iter()
        .find(|(name, _)| *name == role)
        .map(|(_, p)| *p)
}

pub fn known_role_names() -> Vec<&'static str> {
    ROLES.iter().map(|(name, _)| *name).collect()
}

/// How the caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    Oidc,
    ApiKey,
}

/// An authenticated caller.
#[derive(Debug, Clone, Serialize)]
pub struct Principal {
    /// `oidc:<sub>` or `apikey:<key id>`: unique across both methods.
    pub subject: String,
    pub tenant: String,
    pub roles: Vec<String>,
    pub permissions: BTreeSet<Permission>,
    pub method: AuthMethod,
}

impl Principal {
    pub fn new(subject: String, tenant: String, roles: Vec<String>, method: AuthMethod) -> Self {
        let permissions = roles
            .iter()
            .filter_map(|r| role_permissions(r))
            .flat_map(|p| p.iter().copied())
            .collect();
        Self {
            subject,
            tenant,
            roles,
            permissions,
            method,
        }
    }

    pub fn has(&self, permission: Permission) -> bool {
        self.permissions.contains(&permission)
    }

    /// Fails with 403 naming the missing permission.
    pub fn require(&self, permission: Permission) -> Result<(), crate::error::ApiError> {
        if self.has(permission) {
            Ok(())
        } else {
            Err(crate::error::ApiError::forbidden(format!(
                "this action needs the `{permission}` permission; the caller's roles [{}] do not grant it",
                self.roles.join(", ")
            )))
        }
    }
}

/// Tenant names are path-safe identifiers because they appear in logs, audit events and keys.
pub fn validate_tenant(tenant: &str) -> Result<(), String> {
    let ok = !tenant.is_empty()
        && tenant.len() <= 64
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tenant {tenant:?} is not valid: use 1 to 64 characters from A-Z a-z 0-9 - _ ."
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_roles_grant_nothing_and_known_roles_map() {
        let p = Principal::new(
            "apikey:x".into(),
            "t".into(),
            vec!["superuser".into(), "agent".into()],
            AuthMethod::ApiKey,
        );
        assert!(p.has(Permission::SandboxRun));
        assert!(!p.has(Permission::SandboxAdmin));
        assert!(!p.has(Permission::Admin));
        let err = p.require(Permission::AuditRead).unwrap_err();
        assert_eq!(err.status, axum::http::StatusCode::FORBIDDEN);
        assert!(err.message.contains("audit:read"));
    }

    #[test]
    fn tenant_names_are_restricted() {
        assert!(validate_tenant("acme-payments_1").is_ok());
        assert!(validate_tenant("").is_err());
        assert!(validate_tenant("a/b").is_err());
        assert!(validate_tenant(&"x".repeat(65)).is_err());
    }
}
