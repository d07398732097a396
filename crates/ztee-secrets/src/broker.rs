//! One place that hands out secret values for a sandbox and takes them back.

use crate::vault::VaultClient;
use crate::{LocalStore, SecretError, SecretRequest, SecretValue};

/// Where a leased value came from (shown in audit events, never the value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretSource {
    Store,
    VaultKv,
    VaultDynamic,
}

pub struct LeasedSecret {
    pub request: SecretRequest,
    pub value: SecretValue,
    pub source: SecretSource,
}

/// The values given to one sandbox. Hand it back with [`SecretBroker::release`] when the sandbox
/// ends, so dynamic secrets are revoked at the backend.
pub struct Lease {
    pub secrets: Vec<LeasedSecret>,
    vault_leases: Vec<String>,
}

impl Lease {
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// Dynamic-secret leases still to revoke.
    pub fn backend_leases(&self) -> usize {
        self.vault_leases.len()
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self
            .secrets
            .iter()
            .map(|s| s.request.name.as_str())
            .collect();
        f.debug_struct("Lease")
            .field("secrets", &names)
            .field("backend_leases", &self.vault_leases.len())
            .finish()
    }
}

#[derive(Debug, Default)]
pub struct SecretBroker {
    store: Option<LocalStore>,
    vault: Option<VaultClient>,
}

impl SecretBroker {
    pub fn new(store: Option<LocalStore>, vault: Option<VaultClient>) -> Self {
        Self { store, vault }
    }

    pub fn store(&self) -> Option<&LocalStore> {
        self.store.as_ref()
    }

    pub fn vault(&self) -> Option<&VaultClient> {
        self.vault.as_ref()
    }

    /// Fetches every requested secret: from Vault when a Vault mapping names it, else from the
    /// built-in store. All or nothing: on any failure, dynamic leases already taken are revoked.
    pub async fn lease(&self, requests: &[SecretRequest]) -> Result<Lease, SecretError> {
        let mut lease = Lease {
            secrets: Vec::with_capacity(requests.len()),
            vault_leases: Vec::new(),
        };
        for request in requests {
            match self.fetch(request).await {
                Ok((value, source, backend_lease)) => {
                    lease.vault_leases.extend(backend_lease);
                    lease.secrets.push(LeasedSecret {
                        request: request.clone(),
                        value,
                        source,
                    });
                }
                Err(e) => {
                    self.release(lease).await;
                    return Err(e);
                }
            }
        }
        Ok(lease)
    }

    async fn fetch(
        &self,
        request: &SecretRequest,
    ) -> Result<(SecretValue, SecretSource, Option<String>), SecretError> {
        let name = &request.name;
        if let Some(vault) = self.vault.as_ref().filter(|v| v.serves(name)) {
            let secret = vault.read(name).await?;
            let source = if secret.lease_id.is_some() {
                SecretSource::VaultDynamic
            } else {
                SecretSource::VaultKv
            };
            return Ok((secret.value, source, secret.lease_id));
        }
        match &self.store {
            Some(store) => Ok((store.get(name)?, SecretSource::Store, None)),
            None => Err(SecretError::Unavailable(name.to_string())),
        }
    }

    /// Ends a lease: revokes its dynamic secrets at the backend. Returns how many revocations
    /// failed (each is logged; the backend's own lease TTL still ends them).
    pub async fn release(&self, lease: Lease) -> usize {
        let mut failed = 0;
        if let Some(vault) = &self.vault {
            for id in &lease.vault_leases {
                if let Err(e) = vault.revoke(id).await {
                    tracing::warn!(error = %e, "revoking a dynamic secret lease failed");
                    failed += 1;
                }
            }
        }
        failed
    }
}
