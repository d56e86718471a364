-- name: evidence
-- Evidence of a rule's rows (the table ${hits}, one row per rule row): per
-- row and boot, its device, agent, firmware, consent, first and last
-- record time, seconds to the first contact and what the records were
-- read from (over the digest of the flows: `window_last` is a digest
-- row's last window). ${destination} is how the
-- rule names a destination: the host name, or its registrable domain.
-- columns: row_id int, device text, agent text, boot text, os_version text, consent text, first_ts int, last_ts int, first_s float, vendor text, model text, source text
SELECT h.row_id, f.device_pseudonym AS device, f.agent_id AS agent, f.boot_pseudonym AS boot,
       min(f.os_version) AS os_version, min(f.consent) AS consent,
       min(f.window_start) AS first_ts, max(f.window_last) AS last_ts,
       min(f.seconds_since_boot) AS first_s,
       f.vendor, min(f.model) AS model, min(coalesce(f.source, 'unspecified')) AS source
FROM flows f
JOIN ${hits} h ON f.vendor = h.vendor AND ${destination} = h.domain
WHERE (h.model IS NULL OR f.model = h.model)
  AND (h.consent_off IS NULL OR strpos(concat(';', f.consent, ';'), concat(';', h.consent_off, '=off;')) > 0)
GROUP BY h.row_id, f.device_pseudonym, f.agent_id, f.boot_pseudonym, f.vendor
