-- name: models
-- Populations: each model's devices and volunteers.
-- columns: vendor text, model text, devices int, volunteers int
SELECT vendor, model, count(DISTINCT device_pseudonym) AS devices, count(DISTINCT agent_id) AS volunteers
FROM flows
GROUP BY vendor, model
HAVING count(DISTINCT device_pseudonym) >= ${min_devices} AND count(DISTINCT agent_id) >= ${min_volunteers}
