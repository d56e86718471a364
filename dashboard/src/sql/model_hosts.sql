-- name: model_hosts
-- The host names of each destination a model contacts.
-- columns: vendor text, model text, destination text, domain text
SELECT vendor, model, destination, domain
FROM ${dest_flows}
GROUP BY vendor, model, destination, domain
HAVING count(DISTINCT device_pseudonym) >= ${min_devices} AND count(DISTINCT agent_id) >= ${min_volunteers}
