-- name: model_hosts
-- The plain form of the query of the same name, which a test checks it
-- against (see queries.rs): what it must answer.
-- The host names of each destination a model contacts.
-- columns: vendor text, model text, destination text, domain text
SELECT vendor, model, destination, domain
FROM ${dest_flows}
GROUP BY vendor, model, destination, domain
HAVING count(DISTINCT device_pseudonym) >= ${min_devices} AND count(DISTINCT agent_id) >= ${min_volunteers}
