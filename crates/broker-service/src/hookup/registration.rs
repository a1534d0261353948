//! Registering a tenant by hand (`POST /admin/tenants`, `provet-broker tenants add`): for
//! credentials Provet delivered by email. The same parser, rules, storage and answers as
//! the hookup; the delivery records its source. A bad message changes nothing.

use broker_domain::{DeliverySource, HookupMessage};
use tracing::Instrument;

use super::{HookupError, HookupIntake, HookupReceipt};

impl HookupIntake {
    /// Validates and stores one hookup message from an operator. `Ok` means it is durably
    /// stored, with its events. Stored directly (a rare, interactive act), not batched.
    pub async fn register(
        &self,
        body: &[u8],
        source: DeliverySource,
    ) -> Result<HookupReceipt, HookupError> {
        let msg = HookupMessage::parse(body, &self.policy)?;
        let span = tracing::info_span!(
            "registration",
            provet_id = msg.provet_id.get(),
            client_id = %msg.client_id,
            source = source.as_str()
        );
        async {
            let decision = self
                .store
                .tenants()
                .apply_hookup(&msg, source, self.clock.now())
                .await
                .inspect_err(|e| {
                    tracing::error!(error = %e, "a tenant registered by hand could not be stored")
                })?;
            Ok(self.stored(msg, decision.outcome))
        }
        .instrument(span)
        .await
    }
}
