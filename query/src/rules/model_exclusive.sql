-- name: model_exclusive
-- title: Destinations only one vendor's devices contact
-- description: Destinations (host names) contacted by at least a few devices, all of them of one vendor: the vendor's own servers and the third parties only its firmware talks to. Destinations shared across vendors (time servers, connectivity checks, CDNs, apps' backends) are left out, so what remains is what the vendor's software itself brings.
-- param: min_devices = 5 | fewest distinct devices that must contact the destination
-- columns: vendor, domain, models, devices
WITH contacts AS (
  SELECT DISTINCT vendor, model, device_pseudonym, domain
  FROM flows
  WHERE domain IS NOT NULL AND vendor <> ''
)
SELECT min(vendor) AS vendor, domain,
       array_to_string(array_sort(array_agg(DISTINCT model)), ', ') AS models,
       count(DISTINCT device_pseudonym) AS devices
FROM contacts
GROUP BY domain
HAVING count(DISTINCT vendor) = 1 AND count(DISTINCT device_pseudonym) >= ${min_devices}
ORDER BY vendor, devices DESC, domain
