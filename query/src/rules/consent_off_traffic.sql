-- name: consent_off_traffic
-- title: Vendor destinations contacted by devices whose owners switched consent off
-- description: For each consent setting an owner declared "off", the vendor-specific destinations (host names) that most of a model's consent-off devices still contact, next to the share of the same vendor's devices with that setting "on" that contact them (NULL when no device of the vendor has it on). A destination is vendor-specific when its vendor's devices make up most of the devices contacting it, so shared services (time servers, connectivity checks, CDNs) are left out. A consent-off share close to the consent-on share means the setting changes nothing on the wire.
-- param: min_share = 0.5 | share of the model's consent-off devices that must contact the destination
-- param: min_devices = 5 | fewest consent-off devices that must contact it
-- param: min_vendor_share = 0.75 | share of all devices contacting the destination that must be of this vendor
-- columns: vendor, model, consent_key, domain, off_devices, model_off_devices, off_share, on_share, vendor_share, sources
WITH settings AS (
  SELECT DISTINCT vendor, model, device_pseudonym,
         split_part(kv, '=', 1) AS consent_key, split_part(kv, '=', 2) AS consent_value
  FROM (
    SELECT vendor, model, device_pseudonym, unnest(string_to_array(consent, ';')) AS kv
    FROM (SELECT DISTINCT vendor, model, device_pseudonym, consent FROM flows WHERE consent <> '')
  )
),
-- A destination no name was seen for counts under its unusual port or
-- its address's network (unnamed_destination).
contacts AS (
  SELECT DISTINCT vendor, model, device_pseudonym,
         CASE WHEN domain IS NULL THEN unnamed_destination(transport, dst_ip, CAST(dst_port AS VARCHAR)) ELSE domain END AS domain,
         coalesce(source, 'unspecified') AS source
  FROM flows
),
reach AS (
  SELECT domain, vendor, count(DISTINCT device_pseudonym) AS d
  FROM contacts
  GROUP BY domain, vendor
),
reach_total AS (
  SELECT domain, sum(d) AS total
  FROM reach
  GROUP BY domain
),
off_model AS (
  SELECT vendor, model, consent_key, count(DISTINCT device_pseudonym) AS n
  FROM settings
  WHERE consent_value = 'off'
  GROUP BY vendor, model, consent_key
),
off_contacts AS (
  SELECT s.vendor, s.model, s.consent_key, c.domain, count(DISTINCT s.device_pseudonym) AS devices,
         array_to_string(array_sort(array_agg(DISTINCT c.source)), ', ') AS sources
  FROM settings s
  JOIN contacts c ON c.vendor = s.vendor AND c.model = s.model AND c.device_pseudonym = s.device_pseudonym
  WHERE s.consent_value = 'off'
  GROUP BY s.vendor, s.model, s.consent_key, c.domain
),
on_vendor AS (
  SELECT vendor, consent_key, count(DISTINCT device_pseudonym) AS n
  FROM settings
  WHERE consent_value = 'on'
  GROUP BY vendor, consent_key
),
on_contacts AS (
  SELECT s.vendor, s.consent_key, c.domain, count(DISTINCT s.device_pseudonym) AS devices
  FROM settings s
  JOIN contacts c ON c.vendor = s.vendor AND c.model = s.model AND c.device_pseudonym = s.device_pseudonym
  WHERE s.consent_value = 'on'
  GROUP BY s.vendor, s.consent_key, c.domain
)
SELECT o.vendor, o.model, o.consent_key, o.domain, o.devices AS off_devices, m.n AS model_off_devices,
       round(CAST(o.devices AS DOUBLE) / m.n, 3) AS off_share,
       round(CAST(coalesce(oc.devices, 0) AS DOUBLE) / ov.n, 3) AS on_share,
       round(CAST(r.d AS DOUBLE) / t.total, 3) AS vendor_share, o.sources
FROM off_contacts o
JOIN off_model m ON m.vendor = o.vendor AND m.model = o.model AND m.consent_key = o.consent_key
JOIN reach r ON r.domain = o.domain AND r.vendor = o.vendor
JOIN reach_total t ON t.domain = o.domain
LEFT JOIN on_vendor ov ON ov.vendor = o.vendor AND ov.consent_key = o.consent_key
LEFT JOIN on_contacts oc ON oc.vendor = o.vendor AND oc.consent_key = o.consent_key AND oc.domain = o.domain
WHERE o.devices >= ${min_devices}
  AND CAST(o.devices AS DOUBLE) / m.n >= ${min_share}
  AND CAST(r.d AS DOUBLE) / t.total >= ${min_vendor_share}
ORDER BY off_share DESC, off_devices DESC, o.vendor, o.model, o.consent_key, o.domain
