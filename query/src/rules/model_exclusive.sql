-- name: model_exclusive
-- title: Destinations only one vendor's devices contact
-- description: Destinations (host names) contacted by at least a few devices, all of them of one vendor: the vendor's own servers and the third parties only its firmware talks to. Destinations shared across vendors (time servers, connectivity checks, CDNs, apps' backends) are left out, so what remains is what the vendor's software itself brings.
-- param: min_devices = 5 | fewest distinct devices that must contact the destination
-- columns: vendor, domain, models, devices, sources
-- A destination no name was seen for counts under its unusual port or its
-- address's network (unnamed_destination).
WITH contacts AS (
  SELECT vendor, model, device_pseudonym,
         CASE WHEN domain IS NULL THEN unnamed_destination(transport, dst_ip, CAST(dst_port AS VARCHAR)) ELSE domain END AS domain,
         coalesce(source, 'unspecified') AS source
  FROM flows
  WHERE vendor <> ''
),
labels AS (
  SELECT domain, min(vendor) AS vendor,
         array_to_string(array_sort(array_agg(DISTINCT model)), ', ') AS models
  FROM contacts
  GROUP BY domain
  HAVING min(vendor) = max(vendor)
),
reach AS (
  SELECT domain, count(DISTINCT device_pseudonym) AS devices, array_to_string(array_sort(array_agg(DISTINCT source)), ', ') AS sources
  FROM contacts
  WHERE domain IN (SELECT domain FROM labels)
  GROUP BY domain
)
SELECT l.vendor, l.domain, l.models, r.devices, r.sources
FROM labels l
JOIN reach r ON r.domain = l.domain
WHERE r.devices >= ${min_devices}
ORDER BY vendor, devices DESC, domain
