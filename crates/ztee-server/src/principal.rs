//! Who is calling, and what they may do.
//!
//! A principal comes out of authentication (an OIDC token or an API key) and carries its tenant
//! and roles. Roles map to permissions through a fixed table; unknown roles grant nothing.
//!
//! Role `admin` is the admin of its own tenant. Reaching across tenants (every tenant's sandboxes,
//! approvals, audit and traces, the global secret store, metrics) takes `platform:admin`, which
//! only platform roles grant, and platform roles come from API keys only: an identity provider's
//! roles claim never grants them (see [`PLATFORM_ROLES`]).

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A permission checked by the gateway before any stage that needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
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
    /// Admin of the own tenant: marks tenant administrators. It reaches no other tenant.
    #[serde(rename = "admin")]
    Admin,
    /// Platform operator: every tenant's sandboxes, approvals, audit and traces, the global secret
    /// store, host details of sandboxes.
    #[serde(rename = "platform:admin")]
    PlatformAdmin,
    /// Read `/metrics` (counts for every tenant).
    #[serde(rename = "metrics:read")]
    MetricsRead,
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
            Self::PlatformAdmin => "platform:admin",
            Self::MetricsRead => "metrics:read",
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
    // Platform roles (see `PLATFORM_ROLES`): API keys only.
    (
        "platform-admin",
        &[
            Permission::SandboxRun,
            Permission::SandboxAdmin,
            Permission::AuditRead,
            Permission::ApprovalDecide,
            Permission::Admin,
            Permission::LlmChat,
            Permission::PlatformAdmin,
            Permission::MetricsRead,
        ],
    ),
    // For a Prometheus scraper's API key.
    ("metrics", &[Permission::MetricsRead]),
];

/// Roles that reach beyond one tenant. An OIDC roles claim naming them grants nothing: an
/// identity provider is administered per organisation, and a tenant's IdP admin must not make
/// itself operator of the platform. Platform admins over OIDC need the operator's
/// `oidc.platform_admin_claim`.
pub const PLATFORM_ROLES: &[&str] = &["platform-admin", "metrics"];

/// The role an OIDC token gets when the operator's `oidc.platform_admin_claim` is `true` in it.
pub const PLATFORM_ADMIN_ROLE: &str = "platform-admin";

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    Oidc,
    ApiKey,
    /// An operator at a terminal on this host (the CLI), known by the process's OS account:
    /// whoever can run `ztee` against the data directory. Never a caller of the HTTP API.
    Local,
}

/// An authenticated caller.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Principal {
    /// `oidc:<sub>` or `apikey:<key id>`: unique across both methods.
    pub subject: String,
    pub tenant: String,
    pub roles: Vec<String>,
    pub permissions: BTreeSet<Permission>,
    pub method: AuthMethod,
}

impl Principal {
    /// Roles grant their permissions; for [`AuthMethod::Oidc`], platform roles
    /// ([`PLATFORM_ROLES`]) grant nothing (use [`Principal::grant_platform_admin`]).
    pub fn new(subject: String, tenant: String, roles: Vec<String>, method: AuthMethod) -> Self {
        let permissions = roles
            .iter()
            .filter(|r| method == AuthMethod::ApiKey || !PLATFORM_ROLES.contains(&r.as_str()))
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

    /// The operator running the CLI as OS account `account`: subject `local:<account>` (a
    /// prefix no API caller's subject has), tenant `system`, role `operator`. It may run and
    /// manage sandboxes on this host (policy still decides each action), and nothing else: no
    /// audit reading, approving or administration through the core.
    pub fn local_operator(account: &str) -> Self {
        let mut principal = Self::new(
            format!("local:{account}"),
            "system".into(),
            vec!["operator".into()],
            AuthMethod::Local,
        );
        principal
            .permissions
            .extend([Permission::SandboxRun, Permission::SandboxAdmin]);
        principal
    }

    /// Makes this principal a platform admin: for an OIDC token whose operator-configured
    /// platform admin claim is `true`.
    pub fn grant_platform_admin(&mut self) {
        if let Some(granted) = role_permissions(PLATFORM_ADMIN_ROLE) {
            self.permissions.extend(granted.iter().copied());
        }
        if !self.roles.iter().any(|r| r == PLATFORM_ADMIN_ROLE) {
            self.roles.push(PLATFORM_ADMIN_ROLE.to_owned());
        }
    }

    pub fn has(&self, permission: Permission) -> bool {
        self.permissions.contains(&permission)
    }

    /// Fails with 403 naming the missing permission.
    pub fn require(&self, permission: Permission) -> Result<(), crate::error::ActionError> {
        if self.has(permission) {
            Ok(())
        } else {
            Err(crate::error::ActionError::forbidden(format!(
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
        assert_eq!(err.kind, crate::error::ErrorKind::Forbidden);
        assert!(err.message.contains("audit:read"));
    }

    /// Review #12: `admin` is its own tenant's admin; platform permissions come from an API key's
    /// platform role, never from an OIDC roles claim.
    #[test]
    fn admin_is_per_tenant_and_platform_roles_need_an_api_key() {
        let oidc_admin = Principal::new(
            "oidc:a".into(),
            "acme".into(),
            vec!["admin".into()],
            AuthMethod::Oidc,
        );
        for p in [
            Permission::SandboxRun,
            Permission::SandboxAdmin,
            Permission::AuditRead,
            Permission::ApprovalDecide,
            Permission::LlmChat,
            Permission::Admin,
        ] {
            assert!(oidc_admin.has(p), "{p}");
        }
        assert!(!oidc_admin.has(Permission::PlatformAdmin));
        assert!(!oidc_admin.has(Permission::MetricsRead));
        assert!(!oidc_admin.has(Permission::PanDetokenize));

        let claimed = Principal::new(
            "oidc:b".into(),
            "acme".into(),
            vec!["platform-admin".into(), "metrics".into()],
            AuthMethod::Oidc,
        );
        assert!(claimed.permissions.is_empty(), "{:?}", claimed.permissions);

        let key = Principal::new(
            "apikey:k".into(),
            "default".into(),
            vec!["platform-admin".into()],
            AuthMethod::ApiKey,
        );
        assert!(key.has(Permission::PlatformAdmin));
        assert!(key.has(Permission::MetricsRead));
        assert!(!key.has(Permission::PanDetokenize));
        let scraper = Principal::new(
            "apikey:m".into(),
            "default".into(),
            vec!["metrics".into()],
            AuthMethod::ApiKey,
        );
        assert_eq!(
            scraper.permissions.iter().copied().collect::<Vec<_>>(),
            [Permission::MetricsRead]
        );

        let mut granted = oidc_admin.clone();
        granted.grant_platform_admin();
        assert!(granted.has(Permission::PlatformAdmin));
        assert!(granted.roles.contains(&"platform-admin".to_owned()));
    }

    #[test]
    fn tenant_names_are_restricted() {
        assert!(validate_tenant("acme-payments_1").is_ok());
        assert!(validate_tenant("").is_err());
        assert!(validate_tenant("a/b").is_err());
        assert!(validate_tenant(&"x".repeat(65)).is_err());
    }
}
