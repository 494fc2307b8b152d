//! An invoice as CSV (one row per line, for spreadsheets) and as a
//! self-contained printable HTML page (no scripts, no external assets).

use super::invoices::{InvoiceView, decimal};
use crate::metering::query;

pub fn csv(inv: &InvoiceView) -> String {
    let id = inv.id.clone().unwrap_or_else(|| "upcoming".into());
    let mut rows: Vec<Vec<String>> = inv
        .lines
        .iter()
        .map(|l| {
            vec![
                id.clone(),
                inv.org_id.clone(),
                inv.period.clone(),
                serde_json::to_value(l.kind).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(),
                l.metric.clone().unwrap_or_default(),
                l.reference.clone().unwrap_or_default(),
                l.description.clone(),
                l.quantity.to_string(),
                l.amount.clone(),
                inv.currency.clone(),
            ]
        })
        .collect();
    rows.push(vec![
        id,
        inv.org_id.clone(),
        inv.period.clone(),
        "total".into(),
        String::new(),
        String::new(),
        "Total due".into(),
        String::new(),
        inv.total.clone(),
        inv.currency.clone(),
    ]);
    query::csv(
        &[
            "invoice_id",
            "org_id",
            "period",
            "kind",
            "metric",
            "reference",
            "description",
            "quantity",
            "amount",
            "currency",
        ],
        rows,
    )
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub fn html(inv: &InvoiceView) -> String {
    let title = match &inv.id {
        Some(id) => format!("Invoice {id}"),
        None => "Upcoming invoice (draft)".to_string(),
    };
    let money = |m: i64| format!("{} {}", decimal(m), escape(&inv.currency));
    let mut lines = String::new();
    for l in &inv.lines {
        lines.push_str(&format!(
            "<tr><td>{}</td><td class=num>{}</td><td class=num>{}</td></tr>\n",
            escape(&l.description),
            if l.quantity > 0 { l.quantity.to_string() } else { String::new() },
            money(l.amount_micros),
        ));
    }
    let mut late = String::new();
    if !inv.late_usage.is_empty() {
        late.push_str("<p class=note>Includes usage of earlier periods counted after they closed: ");
        let parts: Vec<String> = inv
            .late_usage
            .iter()
            .map(|l| format!("{} {} ({})", l.quantity, escape(&l.metric), escape(&l.period)))
            .collect();
        late.push_str(&parts.join(", "));
        late.push_str(".</p>\n");
    }
    let created =
        inv.created_at.map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string()).unwrap_or_else(|| "not yet".into());
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 14px/1.5 system-ui, sans-serif; max-width: 720px; margin: 2em auto; color: #222; }}
table {{ width: 100%; border-collapse: collapse; margin: 1em 0; }}
th, td {{ padding: .4em .6em; border-bottom: 1px solid #ddd; text-align: left; }}
.num {{ text-align: right; white-space: nowrap; }}
.total td {{ font-weight: bold; border-top: 2px solid #222; }}
.meta td {{ border: none; padding: .1em .6em .1em 0; }}
.note {{ color: #555; font-size: 12px; }}
@media print {{ body {{ margin: 0; }} }}
</style></head>
<body>
<h1>{title}</h1>
<table class=meta>
<tr><td>Customer</td><td>{org}</td></tr>
<tr><td>Period</td><td>{period} ({start} to {end})</td></tr>
<tr><td>Plan</td><td>{plan}</td></tr>
<tr><td>Status</td><td>{status}</td></tr>
<tr><td>Issued</td><td>{created}</td></tr>
</table>
<table>
<thead><tr><th>Description</th><th class=num>Quantity</th><th class=num>Amount</th></tr></thead>
<tbody>
{lines}</tbody>
<tfoot>
<tr><td>Subtotal</td><td></td><td class=num>{subtotal}</td></tr>
<tr><td>Discounts</td><td></td><td class=num>{discounts}</td></tr>
<tr><td>Credits applied</td><td></td><td class=num>{credits}</td></tr>
<tr class=total><td>Total due</td><td></td><td class=num>{total}</td></tr>
</tfoot>
</table>
{late}<p class=note>No tax is included. Priced by {plugin} {version} (pricing version {pricing_version}).</p>
</body></html>
"#,
        org = escape(&inv.org_id),
        period = escape(&inv.period),
        start = inv.period_start.format("%Y-%m-%d"),
        end = inv.period_end.format("%Y-%m-%d"),
        plan = escape(&inv.plan),
        status = escape(&inv.status),
        subtotal = money(inv.subtotal_micros),
        discounts = money(inv.discounts_micros),
        credits = money(inv.credits_applied_micros),
        total = money(inv.total_micros),
        plugin = escape(&inv.pricing.plugin_name),
        version = escape(&inv.pricing.plugin_version),
        pricing_version = escape(inv.pricing.pricing_version.as_deref().unwrap_or("unnamed")),
    )
}
