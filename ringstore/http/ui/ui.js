// The node's web page: polls /ui/status.json for the cluster picture and request rates, and
// browses, downloads and uploads objects through the Riak API. No framework, no build step.
//
// Bucket and key names are bytes. The Riak API's JSON carries them as strings in which a
// byte that is not part of valid UTF-8 is a lone surrogate U+DC80..U+DCFF (see
// ringstore/http/riak.py); nameBytes() turns such a string back into the exact bytes for URLs.
// User data only ever reaches the page as text nodes or attributes, never as markup.

"use strict";

const POLL_INTERVAL_MS = 2000; // fast enough to watch load move, light on the node
const RATE_HISTORY_POINTS = 60; // two minutes of the total rate in the sparkline
const SVG_NS = "http://www.w3.org/2000/svg";
const PALETTE = [
  "#2458c6", "#e07b24", "#2a9d61", "#c23a6b", "#7a4cc2", "#1b9aaa",
  "#b8860b", "#5b6b7a", "#d1495b", "#3d7d3a", "#8e5572", "#00798c",
];
const STAT_LABELS = [
  ["ringstore_objects", "objects stored", "count"],
  ["ringstore_chunks", "chunk files", "count"],
  ["ringstore_chunk_bytes", "chunk store", "bytes"],
  ["ringstore_metadata_bytes", "LMDB size", "bytes"],
  ["node_gets_total", "gets coordinated", "count"],
  ["node_puts_total", "puts coordinated", "count"],
  ["ringstore_deletes_total", "deletes coordinated", "count"],
  ["read_repairs_total", "read repairs", "count"],
  ["ringstore_quorum_failures_total", "quorum failures", "count"],
];

const state = {
  bucket: null, // selected bucket name (JSON form)
  key: null,
  previous: null, // the last status document, for rates
  history: [], // total request rate per poll
};

// -- names -----------------------------------------------------------------------------------

function nameBytes(name) {
  const encoder = new TextEncoder();
  const bytes = [];
  for (const ch of name) {
    const code = ch.codePointAt(0);
    if (code >= 0xdc80 && code <= 0xdcff) {
      bytes.push(code - 0xdc00);
    } else {
      bytes.push(...encoder.encode(ch));
    }
  }
  return bytes;
}

// Percent-encode every byte but the unreserved ones: the server decodes segments byte-wise.
function quoteName(name) {
  let out = "";
  for (const byte of nameBytes(name)) {
    const ch = String.fromCharCode(byte);
    out += /[A-Za-z0-9\-_.~]/.test(ch) ? ch : "%" + byte.toString(16).toUpperCase().padStart(2, "0");
  }
  return out;
}

// The inverse of the server's riak_quote (for the #bucket=...&key=... the upload returns to).
function unquoteName(text) {
  const bytes = [];
  for (let i = 0; i < text.length; i++) {
    const ch = text[i];
    if (ch === "+") {
      bytes.push(0x20);
    } else if (ch === "%" && /^[0-9A-Fa-f]{2}$/.test(text.slice(i + 1, i + 3))) {
      bytes.push(parseInt(text.slice(i + 1, i + 3), 16));
      i += 2;
    } else {
      bytes.push(...new TextEncoder().encode(ch));
    }
  }
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(new Uint8Array(bytes));
  } catch {
    return bytes.map((b) => String.fromCharCode(b < 0x80 ? b : 0xdc00 + b)).join("");
  }
}

// A name for people: undecodable bytes shown as \xHH.
function displayName(name) {
  let out = "";
  for (const ch of name) {
    const code = ch.codePointAt(0);
    out += code >= 0xdc80 && code <= 0xdcff ? "\\x" + (code - 0xdc00).toString(16) : ch;
  }
  return out;
}

function bucketUrl(bucket) {
  return "/buckets/" + quoteName(bucket);
}

function objectUrl(bucket, key) {
  return bucketUrl(bucket) + "/keys/" + quoteName(key);
}

// -- DOM helpers -----------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  return node;
}

function byId(id) {
  return document.getElementById(id);
}

function formatBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return (unit === 0 ? String(value) : value.toFixed(1)) + " " + units[unit];
}

function formatRate(r) {
  return r >= 100 ? r.toFixed(0) : r >= 10 ? r.toFixed(1) : r.toFixed(2);
}

// -- status: members, ring, rates, handoffs --------------------------------------------------

function memberColors(members) {
  const colors = new Map();
  members.forEach((member, i) => colors.set(member.name, PALETTE[i % PALETTE.length]));
  return colors;
}

// A colour chip; set through the CSSOM, which the page's CSP allows (style attributes it bars).
function swatch(color) {
  const chip = el("span", { class: "swatch" });
  chip.style.background = color;
  return chip;
}

function renderMembers(cluster, colors) {
  byId("members").tBodies[0].replaceChildren(
    ...cluster.members.map((member) =>
      el(
        "tr",
        { "data-member": member.name },
        el("td", {}, swatch(colors.get(member.name)), member.name),
        el("td", {}, el("span", { class: "state " + (member.up ? "up" : "down"), text: member.up ? "up" : "down" })),
        el("td", { class: "num", text: String(member.partitions) }),
      ),
    ),
  );
}

function arcPath(i, count, outer, inner) {
  const a0 = (2 * Math.PI * i) / count - Math.PI / 2;
  const a1 = (2 * Math.PI * (i + 1)) / count - Math.PI / 2;
  const large = a1 - a0 > Math.PI ? 1 : 0;
  const p = (r, a) => `${(r * Math.cos(a)).toFixed(3)} ${(r * Math.sin(a)).toFixed(3)}`;
  return (
    `M ${p(outer, a0)} A ${outer} ${outer} 0 ${large} 1 ${p(outer, a1)} ` +
    `L ${p(inner, a1)} A ${inner} ${inner} 0 ${large} 0 ${p(inner, a0)} Z`
  );
}

function renderRing(cluster, colors) {
  const ring = byId("ring");
  const up = new Map(cluster.members.map((m) => [m.name, m.up]));
  const count = cluster.owners.length;
  const parts = cluster.owners.map((owner, i) => {
    const path = svg("path", {
      d: arcPath(i, count, 100, 62),
      fill: colors.get(owner) || "#999",
      class: up.get(owner) === false ? "partition down" : "partition",
      "data-partition": i,
      "data-owner": owner,
    });
    const title = svg("title");
    title.textContent = `partition ${i}: ${owner}${up.get(owner) === false ? " (down)" : ""}`;
    path.append(title);
    return path;
  });
  const label = svg("text", { y: -2, class: "big" });
  label.textContent = String(count);
  const sub = svg("text", { y: 16 });
  sub.textContent = `partitions · v${cluster.ring_version}`;
  ring.replaceChildren(...parts, label, sub);

  const legend = byId("ring-legend");
  legend.replaceChildren(
    ...cluster.members.map((member) => {
      const owned = cluster.owners.filter((owner) => owner === member.name).length;
      return el("li", {}, swatch(colors.get(member.name)), `${member.name}: ${owned}`);
    }),
  );
}

function renderRates(status) {
  const previous = state.previous;
  const rows = [];
  let total = 0;
  const dt = previous ? status.time_s - previous.time_s : 0;
  for (const [operation, count] of Object.entries(status.requests)) {
    const before = previous ? previous.requests[operation] || 0 : count;
    const rate = dt > 0 ? Math.max(0, count - before) / dt : 0;
    total += rate;
    rows.push([operation, rate, count]);
  }
  rows.sort((a, b) => b[1] - a[1] || b[2] - a[2]);
  byId("rates").tBodies[0].replaceChildren(
    ...rows.map(([operation, rate, count]) =>
      el(
        "tr",
        { "data-operation": operation },
        el("td", { text: operation }),
        el("td", { class: "num", text: formatRate(rate) }),
        el("td", { class: "num", text: String(count) }),
      ),
    ),
  );
  if (previous) {
    state.history.push(total);
    if (state.history.length > RATE_HISTORY_POINTS) state.history.shift();
  }
  byId("rate-total").textContent = previous ? formatRate(total) : "–";
  const peak = Math.max(1, ...state.history);
  const step = 120 / (RATE_HISTORY_POINTS - 1);
  const offset = RATE_HISTORY_POINTS - state.history.length;
  const points = state.history
    .map((rate, i) => `${((offset + i) * step).toFixed(1)},${(29 - (rate / peak) * 27).toFixed(1)}`)
    .join(" ");
  byId("rate-spark").replaceChildren(svg("polyline", { points }));

  const stats = byId("node-stats");
  const items = [];
  for (const [name, label, kind] of STAT_LABELS) {
    if (!(name in status.stats)) continue;
    const value = status.stats[name];
    items.push(el("dt", { text: label }), el("dd", { text: kind === "bytes" ? formatBytes(value) : String(value) }));
  }
  if (status.open_connections !== null && status.open_connections !== undefined) {
    items.push(el("dt", { text: "open connections" }), el("dd", { text: String(status.open_connections) }));
  }
  stats.replaceChildren(...items);
}

function renderHandoffs(cluster) {
  byId("handoffs").tBodies[0].replaceChildren(
    ...cluster.handoffs.map((h) =>
      el(
        "tr",
        {},
        el("td", { class: "num", text: String(h.partition) }),
        el("td", { text: h.kind }),
        el("td", { text: h.source }),
        el("td", { text: h.target }),
        el("td", { class: "num", text: `${h.objects_sent} obj, ${formatBytes(h.bytes_sent)}` }),
      ),
    ),
  );
  byId("handoffs").hidden = cluster.handoffs.length === 0;
  byId("handoffs-empty").hidden = cluster.handoffs.length > 0;
  byId("workers").replaceChildren(
    ...cluster.workers.map((w) => el("li", {}, el("strong", { text: w.name }), " " + w.status)),
  );
}

function renderStatus(status) {
  byId("node-name").textContent = status.node;
  byId("node-version").textContent = "v" + status.version;
  document.title = `ringstore · ${status.node}`;
  if (status.cluster) {
    const colors = memberColors(status.cluster.members);
    renderMembers(status.cluster, colors);
    renderRing(status.cluster, colors);
    renderHandoffs(status.cluster);
  }
  renderRates(status);
  state.previous = status;
}

function setPollState(text, failed) {
  const node = byId("poll-state");
  node.textContent = text;
  node.classList.toggle("error", failed);
}

async function poll() {
  try {
    const response = await fetch("/ui/status.json", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    renderStatus(await response.json());
    setPollState("live · updated " + new Date().toLocaleTimeString(), false);
  } catch (error) {
    setPollState("node unreachable: " + error.message, true);
  }
  setTimeout(poll, POLL_INTERVAL_MS);
}

// -- bucket and key browser ------------------------------------------------------------------

async function fetchJson(url) {
  const response = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" });
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status} ${(await response.text()).trim()}`);
  return response.json();
}

function renderPickList(list, names, selected, onPick, emptyText) {
  if (names.length === 0) {
    list.replaceChildren(el("li", { class: "empty", text: emptyText }));
    return;
  }
  list.replaceChildren(
    ...names.map((name) => {
      const item = el("li", { text: displayName(name), title: displayName(name) });
      item.dataset.name = name;
      if (name === selected) item.classList.add("selected");
      item.addEventListener("click", () => onPick(name));
      return item;
    }),
  );
}

async function loadBuckets() {
  const list = byId("buckets");
  try {
    const { buckets } = await fetchJson("/buckets?buckets=true");
    buckets.sort();
    renderPickList(list, buckets, state.bucket, selectBucket, "No buckets yet.");
  } catch (error) {
    list.replaceChildren(el("li", { class: "empty", text: error.message }));
  }
}

async function loadKeys() {
  const list = byId("keys");
  if (state.bucket === null) {
    list.replaceChildren(el("li", { class: "empty", text: "Pick a bucket." }));
    return;
  }
  const bucket = state.bucket;
  byId("keys-title").textContent = "Keys in " + displayName(bucket);
  try {
    const { keys } = await fetchJson(bucketUrl(bucket) + "/keys?keys=true");
    // A listing reads one replica per partition (Riak's coverage), which may not have a
    // write answered at W < N yet: keep the key just selected (or uploaded) in view.
    if (state.key !== null && !keys.includes(state.key)) keys.push(state.key);
    keys.sort();
    if (state.bucket === bucket) renderPickList(list, keys, state.key, selectKey, "No keys.");
  } catch (error) {
    if (state.bucket === bucket) list.replaceChildren(el("li", { class: "empty", text: error.message }));
  }
}

async function selectBucket(bucket) {
  state.bucket = bucket;
  state.key = null;
  byId("upload-bucket").value = bucket;
  byId("object").replaceChildren("Pick a key.");
  await Promise.all([loadBuckets(), loadKeys()]);
}

async function selectKey(key) {
  state.key = key;
  await Promise.all([loadKeys(), showObject(state.bucket, key)]);
}

function siblingView(bucket, key, response, vtag, index, count) {
  const headers = response.headers;
  const title = count > 1 ? `Sibling ${index + 1} of ${count}` : "Value";
  if (response.status === 404) {
    // A deletion concurrent with a write is a sibling too: a tombstone with no value.
    return el("div", { class: "sibling deleted", "data-vtag": vtag }, el("h4", { text: title + " (deleted)" }));
  }
  const url = objectUrl(bucket, key) + (vtag === null ? "" : "?vtag=" + encodeURIComponent(vtag));
  const facts = [
    ["Content-Type", headers.get("Content-Type")],
    ["Size", headers.has("Content-Length") ? formatBytes(Number(headers.get("Content-Length"))) : null],
    ["ETag", headers.get("ETag")],
    ["Last-Modified", headers.get("Last-Modified")],
  ];
  for (const [name, value] of headers) {
    if (name.toLowerCase().startsWith("x-riak-meta-")) facts.push([name.slice(12), value]);
  }
  const list = el("dl");
  for (const [name, value] of facts) {
    if (value !== null) list.append(el("dt", { text: name }), el("dd", { text: value }));
  }
  const link = el("a", { class: "button download", href: url, download: displayName(key), text: "Download" });
  return el("div", { class: "sibling", "data-vtag": vtag === null ? "" : vtag }, el("h4", { text: title }), list, link);
}

// What the object view shows for bucket/key: each sibling's facts and download link.
async function objectView(bucket, key) {
  const url = objectUrl(bucket, key);
  const head = await fetch(url, { method: "HEAD", cache: "no-store" });
  const title = el("p", {}, el("strong", { text: displayName(key) }), " in " + displayName(bucket));
  if (head.status === 404) {
    const deleted = head.headers.get("X-Riak-Deleted") === "true";
    return [title, el("p", { class: "muted", text: deleted ? "Deleted (tombstone)." : "Not found." })];
  }
  if (head.status === 200) return [title, siblingView(bucket, key, head, null, 0, 1)];
  if (head.status !== 300) throw new Error(`HTTP ${head.status}`);
  const listing = await fetch(url, { headers: { Accept: "text/plain" }, cache: "no-store" });
  const vtags = (await listing.text())
    .split("\n")
    .map((line) => line.trim())
    .filter((line) => line && line !== "Siblings:");
  const views = [];
  for (const [i, vtag] of vtags.entries()) {
    const one = await fetch(url + "?vtag=" + encodeURIComponent(vtag), { method: "HEAD", cache: "no-store" });
    views.push(siblingView(bucket, key, one, vtag, i, vtags.length));
  }
  const warning = el("p", {
    class: "warning",
    text: `${vtags.length} siblings: concurrent writes. A write carrying this object's vclock resolves them.`,
  });
  return [title, warning, ...views];
}

async function showObject(bucket, key) {
  const box = byId("object");
  box.classList.remove("muted");
  box.replaceChildren(el("p", { class: "muted", text: "Loading " + displayName(key) + "…" }));
  let nodes;
  try {
    nodes = await objectView(bucket, key);
  } catch (error) {
    nodes = [el("p", { class: "warning", text: "Cannot read the object: " + error.message })];
  }
  // Another key may have been picked while this one loaded: show only the current one.
  if (state.bucket === bucket && state.key === key) box.replaceChildren(...nodes);
}

// -- upload ----------------------------------------------------------------------------------

async function upload(event) {
  event.preventDefault();
  const form = event.target;
  const result = byId("upload-result");
  result.className = "muted";
  result.textContent = "Uploading…";
  byId("upload-submit").disabled = true;
  try {
    const response = await fetch(form.action, {
      method: "POST",
      body: new FormData(form),
      headers: { Accept: "application/json" },
    });
    if (response.status !== 201) throw new Error((await response.text()).trim() || `HTTP ${response.status}`);
    const stored = await response.json();
    result.className = "ok";
    result.textContent = `Stored ${displayName(stored.bucket)}/${displayName(stored.key)} (${formatBytes(stored.size)}).`;
    form.reset();
    await selectBucket(stored.bucket);
    await selectKey(stored.key);
  } catch (error) {
    result.className = "error";
    result.textContent = "Upload failed: " + error.message;
  } finally {
    byId("upload-submit").disabled = false;
  }
}

// -- start -----------------------------------------------------------------------------------

async function start() {
  byId("upload-form").addEventListener("submit", upload);
  byId("refresh-buckets").addEventListener("click", loadBuckets);
  byId("refresh-keys").addEventListener("click", loadKeys);
  poll();
  // After a form post without JavaScript's help, the server sends us to #bucket=B&key=K.
  // Split by hand: URLSearchParams would decode the names as UTF-8 text, not as bytes.
  const params = new Map(
    location.hash
      .slice(1)
      .split("&")
      .filter(Boolean)
      .map((pair) => (pair.includes("=") ? [pair.slice(0, pair.indexOf("=")), pair.slice(pair.indexOf("=") + 1)] : [pair, ""])),
  );
  await loadBuckets();
  if (params.has("bucket")) {
    await selectBucket(unquoteName(params.get("bucket")));
    if (params.has("key")) await selectKey(unquoteName(params.get("key")));
  } else {
    await loadKeys();
  }
}

document.addEventListener("DOMContentLoaded", start);
