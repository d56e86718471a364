-- name: model_hosts
-- The host names of each destination a model contacts.
-- Distinct devices and volunteers are counted by grouping sets (see queries.rs).
-- columns: vendor text, model text, destination text, domain text
SELECT vendor, model, destination, domain
FROM (SELECT vendor, model, destination, domain, device_pseudonym, agent_id
      FROM ${dest_flows}
      GROUP BY GROUPING SETS ((vendor, model, destination, domain, device_pseudonym),
                              (vendor, model, destination, domain, agent_id)))
GROUP BY vendor, model, destination, domain
HAVING count(device_pseudonym) >= ${min_devices} AND count(agent_id) >= ${min_volunteers}
