-- name: model_ports
-- The protocols and ports each model reaches each host name (or unnamed
-- destination) on, for its MUD file.
-- Distinct devices and volunteers are counted by grouping sets (see queries.rs).
-- columns: vendor text, model text, domain text, transport text, port int, devices int, volunteers int
SELECT vendor, model, domain, transport, dst_port AS port,
       count(device_pseudonym) AS devices, count(agent_id) AS volunteers
FROM (SELECT vendor, model, domain, transport, dst_port, device_pseudonym, agent_id
      FROM ${dest_flows}
      WHERE dst_port IS NOT NULL
      GROUP BY GROUPING SETS ((vendor, model, domain, transport, dst_port, device_pseudonym),
                              (vendor, model, domain, transport, dst_port, agent_id)))
GROUP BY vendor, model, domain, transport, dst_port
HAVING count(device_pseudonym) >= ${min_devices} AND count(agent_id) >= ${min_volunteers}
