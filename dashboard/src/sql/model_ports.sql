-- name: model_ports
-- The protocols and ports each model reaches each host name (or unnamed
-- destination) on, for its MUD file.
-- columns: vendor text, model text, domain text, transport text, port int, devices int, volunteers int
SELECT vendor, model, domain, transport, dst_port AS port,
       count(DISTINCT device_pseudonym) AS devices, count(DISTINCT agent_id) AS volunteers
FROM ${dest_flows}
WHERE dst_port IS NOT NULL
GROUP BY vendor, model, domain, transport, dst_port
HAVING count(DISTINCT device_pseudonym) >= ${min_devices} AND count(DISTINCT agent_id) >= ${min_volunteers}
