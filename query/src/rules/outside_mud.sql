-- name: outside_mud
-- title: Destinations outside the model's MUD file
-- description: For each model whose vendor's MUD file (RFC 8520) an operator loaded (`leakwatch mud load`), the destinations its devices connect to that no accepted from-device entry of that file allows, by name (`ietf-acldns:dst-dnsname`, exactly), network, protocol and destination port, with the protocols and ports used; a destination the file allows on one port is not listed for others. A vendor that declared what its device needs and a device that reaches further is a finding of its own; with no MUD file loaded the rule finds nothing.
-- param: min_devices = 5 | fewest distinct devices that must contact the destination outside the file
-- columns: vendor, model, domain, ports, devices, mud_url, sources
-- public: devices
-- needs: dst_port
-- Connections only; a name looked up (transport dns) is not a contact,
-- and a MUD manager lets a device reach its resolver.
-- mud_allowed holds one row per accepted from-device entry, NULL where
-- the entry allows any value (see `leakwatch mud`). A destination no name was seen for counts under
-- its unusual port or its address's network (unnamed_destination).
WITH contacts AS (
  SELECT f.vendor, f.model, f.device_pseudonym, f.domain AS name, f.dst_ip, f.transport, f.dst_port,
         CASE WHEN f.domain IS NULL THEN unnamed_destination(f.transport, f.dst_ip, CAST(f.dst_port AS VARCHAR)) ELSE f.domain END AS domain,
         coalesce(f.source, 'unspecified') AS source
  FROM flows f
  WHERE f.dst_port IS NOT NULL
    AND f.transport IN ('tcp', 'udp', 'quic')
    AND EXISTS (SELECT 1 FROM mud_allowed m WHERE m.vendor = f.vendor AND m.model = f.model)
),
-- A destination is outside when none of its contacts is allowed: then
-- every device that contacts it does so outside the file, and the
-- dashboard's evidence (the devices contacting the destination) counts
-- exactly those. One the file allows on some port or protocol is not
-- listed, whatever other ports its devices use.
allowed AS (
  SELECT DISTINCT c.vendor, c.model, c.domain FROM contacts c
  WHERE EXISTS (
    SELECT 1 FROM mud_allowed m
    WHERE m.vendor = c.vendor AND m.model = c.model
      AND (m.dnsname IS NULL OR lower(c.name) = m.dnsname)
      AND (m.network IS NULL OR ip_in_cidr(c.dst_ip, m.network))
      AND (m.protocol IS NULL OR m.protocol = CASE c.transport WHEN 'tcp' THEN 6 WHEN 'udp' THEN 17 WHEN 'quic' THEN 17 ELSE -1 END)
      AND (m.port_min IS NULL OR c.dst_port BETWEEN m.port_min AND m.port_max))
),
outside AS (
  SELECT * FROM contacts c
  WHERE NOT EXISTS (
    SELECT 1 FROM allowed a WHERE a.vendor = c.vendor AND a.model = c.model AND a.domain = c.domain)
),
files AS (
  SELECT vendor, model, min(mud_url) AS mud_url FROM mud_allowed GROUP BY vendor, model
)
SELECT o.vendor, o.model, o.domain,
       array_to_string(array_sort(array_agg(DISTINCT o.transport || '/' || CAST(o.dst_port AS VARCHAR))), ', ') AS ports,
       count(DISTINCT o.device_pseudonym) AS devices, min(m.mud_url) AS mud_url,
       array_to_string(array_sort(array_agg(DISTINCT o.source)), ', ') AS sources
FROM outside o
JOIN files m ON m.vendor = o.vendor AND m.model = o.model
GROUP BY o.vendor, o.model, o.domain
HAVING count(DISTINCT o.device_pseudonym) >= ${min_devices}
ORDER BY vendor, model, devices DESC, domain
