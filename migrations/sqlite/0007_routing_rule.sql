-- A canary activation's routing rule: a Rhai expression over org, plan,
-- env and bucket deciding per call whether the canary serves it
-- (host/src/plugins/routing.rs). NULL: canary_percent alone decides.
ALTER TABLE plugin_activations ADD COLUMN routing_rule TEXT;
