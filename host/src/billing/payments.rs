//! Payments without a processor in the loop (seed 000 §3.4): payments and
//! failures recorded on invoices, finalized usage exported as Stripe meter
//! events for operators who sync, and Stripe's `invoice.payment_failed`
//! webhook verified and turned into `billing.payment_failed`. No network
//! call to Stripe is made.
//!
//! An invoice's lines and totals never change; only its payment status
//! does (`finalized` ─▶ `paid` or `payment_failed` ─▶ `paid`).

use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;

use super::BillingService;
use super::context::BillingPeriod;
use super::invoices::BillingError;
use crate::audit::{self, Actor, NewEntry};
use crate::auth::keys::random_base62;
use crate::store::sql::{Tx, sql};

/// A payment larger than this (a billion currency units) is a mistake.
pub const MAX_PAYMENT_MICROS: i64 = 1_000_000_000_000_000;

/// How old a signed webhook may be (Stripe's libraries use 5 minutes).
pub const WEBHOOK_TOLERANCE_SECS: i64 = 300;

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentRequest {
    /// `succeeded` or `failed`.
    pub status: String,
    /// Micro-units; default: what is still due.
    pub amount_micros: Option<i64>,
    /// The processor's or bank's reference.
    pub reference: Option<String>,
    /// For a failure: why (`card_declined`).
    pub failure_reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Payment {
    pub id: String,
    pub invoice_id: String,
    pub status: String,
    pub amount_micros: i64,
    pub reference: Option<String>,
    pub failure_reason: Option<String>,
    /// `manual` or `stripe`.
    pub source: String,
    pub occurred_at: DateTime<Utc>,
}

/// What the webhook did with an event.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WebhookOutcome {
    pub received: bool,
    pub event_id: String,
    /// Already handled once (a redelivery): nothing done again.
    pub duplicate: bool,
    /// The memhost invoice the event is about, if it names one.
    pub invoice_id: Option<String>,
    /// `recorded` (a payment or failure on the invoice), `already_settled`
    /// (it was paid), `unmatched` (no memhost invoice named) or `ignored`
    /// (another event type).
    pub action: String,
}

/// Checks a `Stripe-Signature` header (`t=…,v1=…[,v1=…]`): an HMAC-SHA-256
/// of `{t}.{payload}` with the endpoint secret, made within the tolerance.
pub fn verify_stripe_signature(secret: &str, header: &str, payload: &[u8], now: i64) -> Result<(), String> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", s)) => signatures.push(s.to_string()),
            _ => {}
        }
    }
    let t = timestamp.ok_or("Stripe-Signature has no timestamp (t=)")?;
    if signatures.is_empty() {
        return Err("Stripe-Signature has no v1 signature".into());
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|e| e.to_string())?;
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    let expected = hex::encode(mac.finalize().into_bytes());
    if !signatures.iter().any(|s| crate::auth::constant_time_eq(s.as_bytes(), expected.as_bytes())) {
        return Err("no signature matches the payload".into());
    }
    if (now - t).abs() > WEBHOOK_TOLERANCE_SECS {
        return Err(format!(
            "signed {}s from now: outside the {WEBHOOK_TOLERANCE_SECS}s tolerance (a replay?)",
            now - t
        ));
    }
    Ok(())
}

async fn insert_event(tx: &mut Tx, kind: &str, org_id: &str, payload: Value) -> sqlx::Result<()> {
    sql("INSERT INTO billing_events (id, type, org_id, payload, occurred_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(format!("evt_{}", random_base62(20)))
        .bind(kind)
        .bind(org_id)
        .bind(payload.to_string())
        .bind(crate::auth::now())
        .execute(tx)
        .await?;
    Ok(())
}

impl BillingService {
    /// Records a payment or a failure on a finalized invoice.
    pub async fn record_payment(
        &self,
        invoice_id: &str,
        req: PaymentRequest,
        source: &str,
        actor: &Actor,
    ) -> Result<Payment, BillingError> {
        let invoice = self.invoice(invoice_id, None).await?;
        let succeeded = match req.status.as_str() {
            "succeeded" => true,
            "failed" => false,
            other => {
                return Err(BillingError::Invalid(format!("status must be succeeded or failed (got `{other}`)")));
            }
        };
        if invoice.status == "void" {
            return Err(BillingError::Conflict(format!("invoice {invoice_id} is void")));
        }
        let db = self.inner.meter.db();
        let due = invoice.amount_due_micros;
        if succeeded && due == 0 {
            return Err(BillingError::Conflict(format!("invoice {invoice_id} is already paid")));
        }
        let amount = req.amount_micros.unwrap_or(due);
        if amount < 0 || (succeeded && amount == 0) {
            return Err(BillingError::Invalid("amount_micros must be more than 0".into()));
        }
        if amount > MAX_PAYMENT_MICROS {
            return Err(BillingError::Invalid(format!("amount_micros must be at most {MAX_PAYMENT_MICROS}")));
        }
        let payment = Payment {
            id: format!("pay_{}", random_base62(16)),
            invoice_id: invoice_id.to_string(),
            status: req.status.clone(),
            amount_micros: amount,
            reference: req.reference,
            failure_reason: if succeeded { None } else { req.failure_reason.or(Some("unspecified".into())) },
            source: source.to_string(),
            occurred_at: crate::auth::now(),
        };
        let mut tx = db.begin().await?;
        sql("INSERT INTO invoice_payments (id, invoice_id, status, amount, reference, failure_reason, source, occurred_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
        .bind(&payment.id)
        .bind(invoice_id)
        .bind(&payment.status)
        .bind(amount)
        .bind(&payment.reference)
        .bind(&payment.failure_reason)
        .bind(source)
        .bind(payment.occurred_at)
        .execute(&mut tx)
        .await?;
        if succeeded {
            sql("UPDATE invoices SET amount_paid = amount_paid + $1, \
                 status = CASE WHEN amount_paid + $1 >= total THEN 'paid' ELSE status END WHERE id = $2")
            .bind(amount)
            .bind(invoice_id)
            .execute(&mut tx)
            .await?;
        } else {
            sql("UPDATE invoices SET status = 'payment_failed' WHERE id = $1 AND status <> 'paid'")
                .bind(invoice_id)
                .execute(&mut tx)
                .await?;
            let payload = json!({
                "invoice_id": invoice_id, "org_id": invoice.org_id, "period": invoice.period,
                "amount_micros": amount, "failure_reason": payment.failure_reason, "source": source,
            });
            insert_event(&mut tx, "billing.payment_failed", &invoice.org_id, payload).await?;
        }
        let after = serde_json::to_value(&payment).ok();
        audit::record_in(
            &mut tx,
            NewEntry::action(actor, Some(&invoice.org_id), "invoice.payment_recorded", invoice_id, None, after),
        )
        .await?;
        tx.commit().await?;
        Ok(payment)
    }

    pub async fn payments(&self, invoice_id: &str) -> Result<Vec<Payment>, BillingError> {
        self.invoice(invoice_id, None).await?;
        sql("SELECT id, invoice_id, status, amount, reference, failure_reason, source, occurred_at FROM invoice_payments \
             WHERE invoice_id = $1 ORDER BY occurred_at, id")
        .bind(invoice_id)
        .fetch_all(self.inner.meter.db().read())
        .await?
        .iter()
        .map(|r| {
            Ok(Payment {
                id: r.get("id")?,
                invoice_id: r.get("invoice_id")?,
                status: r.get("status")?,
                amount_micros: r.get("amount")?,
                reference: r.get("reference")?,
                failure_reason: r.get("failure_reason")?,
                source: r.get("source")?,
                occurred_at: r.time("occurred_at")?,
            })
        })
        .collect::<sqlx::Result<Vec<_>>>()
        .map_err(Into::into)
    }

    /// A finalized period's usage as Stripe meter events (one per org and
    /// metric with usage), each with an identifier Stripe deduplicates on,
    /// so a re-sync never counts twice.
    pub async fn stripe_meter_events(&self, period: &str) -> Result<Vec<Value>, BillingError> {
        let p = BillingPeriod::parse(period)
            .ok_or_else(|| BillingError::Invalid(format!("period must be YYYY-MM (got `{period}`)")))?;
        let rows = sql("SELECT i.id, i.org_id, i.usage, c.stripe_customer_id FROM invoices i \
             LEFT JOIN customer_pricing c ON c.org_id = i.org_id WHERE i.period = $1 ORDER BY i.org_id")
        .bind(&p.name)
        .fetch_all(self.inner.meter.db().read())
        .await?;
        // Stripe wants the event inside the period: its last second.
        let timestamp = p.end.timestamp() - 1;
        let mut events = Vec::new();
        for r in rows {
            let invoice_id: String = r.get("id")?;
            let org_id: String = r.get("org_id")?;
            let customer: Option<String> = r.get("stripe_customer_id")?;
            let usage: std::collections::BTreeMap<String, u64> = r.json("usage")?;
            for (metric, quantity) in usage.into_iter().filter(|(_, q)| *q > 0) {
                events.push(json!({
                    "object": "billing.meter_event",
                    "event_name": metric,
                    "identifier": format!("{invoice_id}:{metric}"),
                    "timestamp": timestamp,
                    "payload": {
                        "stripe_customer_id": customer.clone().unwrap_or_else(|| org_id.clone()),
                        "value": quantity.to_string(),
                    },
                }));
            }
        }
        Ok(events)
    }

    /// A verified Stripe event about a Stripe invoice that names a memhost
    /// invoice (`metadata.memhost_invoice_id`): `invoice.payment_failed`
    /// records a failure on it (and `billing.payment_failed`),
    /// `invoice.paid` a payment of its `amount_paid`. Each event id is
    /// handled once; other types are acknowledged and ignored.
    pub async fn stripe_event(&self, event: &Value) -> Result<WebhookOutcome, BillingError> {
        let id = event["id"].as_str().ok_or_else(|| BillingError::Invalid("the event has no id".into()))?;
        let kind = event["type"].as_str().ok_or_else(|| BillingError::Invalid("the event has no type".into()))?;
        let db = self.inner.meter.db();
        let fresh = sql(
            "INSERT INTO stripe_webhook_events (id, type, received_at) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(kind)
        .bind(crate::auth::now())
        .execute(db.write())
        .await?;
        let mut outcome = WebhookOutcome {
            received: true,
            event_id: id.to_string(),
            duplicate: fresh == 0,
            invoice_id: None,
            action: "ignored".into(),
        };
        let failed = match kind {
            "invoice.payment_failed" => true,
            "invoice.paid" => false,
            _ => return Ok(outcome),
        };
        if outcome.duplicate {
            return Ok(outcome);
        }
        let object = &event["data"]["object"];
        let Some(invoice_id) = object["metadata"]["memhost_invoice_id"].as_str() else {
            outcome.action = "unmatched".into();
            return Ok(outcome);
        };
        outcome.invoice_id = Some(invoice_id.to_string());
        // Stripe amounts are in cents.
        let micros = |field: &str| {
            object[field].as_i64().and_then(|cents| cents.checked_mul(10_000)).map(|m| m.clamp(0, MAX_PAYMENT_MICROS))
        };
        let req = if failed {
            let reason = object["last_finalization_error"]["code"]
                .as_str()
                .or(object["last_payment_error"]["code"].as_str())
                .unwrap_or("payment_failed");
            PaymentRequest {
                status: "failed".into(),
                amount_micros: micros("amount_due"),
                reference: object["id"].as_str().map(str::to_string),
                failure_reason: Some(reason.to_string()),
            }
        } else {
            PaymentRequest {
                status: "succeeded".into(),
                amount_micros: micros("amount_paid").filter(|m| *m > 0),
                reference: object["id"].as_str().map(str::to_string),
                failure_reason: None,
            }
        };
        match self.record_payment(invoice_id, req, "stripe", &Actor("stripe".into())).await {
            Ok(_) => outcome.action = "recorded".into(),
            Err(BillingError::NotFound(_)) => outcome.action = "unmatched".into(),
            // Paid already (here, or by an earlier event): nothing to record.
            Err(BillingError::Conflict(_)) => outcome.action = "already_settled".into(),
            Err(e) => {
                // Not handled: forget the event so Stripe's retry is.
                let _ = sql("DELETE FROM stripe_webhook_events WHERE id = $1").bind(id).execute(db.write()).await;
                return Err(e);
            }
        }
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &str, t: i64, payload: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{t}.{payload}").as_bytes());
        format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn stripe_signatures() {
        let (secret, body, now) = ("whsec_test", r#"{"id":"evt_1"}"#, 1_700_000_000);
        assert!(verify_stripe_signature(secret, &sign(secret, now, body), body.as_bytes(), now).is_ok());
        assert!(verify_stripe_signature(secret, &sign("whsec_other", now, body), body.as_bytes(), now).is_err());
        assert!(verify_stripe_signature(secret, &sign(secret, now, body), b"{}", now).is_err());
        let old = sign(secret, now - 301, body);
        assert!(verify_stripe_signature(secret, &old, body.as_bytes(), now).unwrap_err().contains("tolerance"));
        assert!(verify_stripe_signature(secret, "v1=abc", body.as_bytes(), now).is_err());
    }
}
