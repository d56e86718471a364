-- name: models
-- Populations: each model's devices and volunteers.
-- Distinct devices and volunteers are counted by grouping sets, as in
-- every dashboard query (see queries.rs): a grouping spills to disk.
-- columns: vendor text, model text, devices int, volunteers int
SELECT vendor, model, count(device_pseudonym) AS devices, count(agent_id) AS volunteers
FROM (SELECT vendor, model, device_pseudonym, agent_id
      FROM flows
      GROUP BY GROUPING SETS ((vendor, model, device_pseudonym), (vendor, model, agent_id)))
GROUP BY vendor, model
HAVING count(device_pseudonym) >= ${min_devices} AND count(agent_id) >= ${min_volunteers}
