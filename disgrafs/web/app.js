// The DisGraFS browser UI: upload, search, tag graph. Every name and tag is user data and is
// put into the page as text (textContent, append of strings, attribute values), never parsed
// as markup.

import { ForceGraph } from "./graph.js";

const TOKEN_KEY = "disgrafs.token";
const PAGE_SIZE = 100;
const GRAPH_FILES = 40;
const TAG_POLL_MS = 500;
const TAG_POLL_TRIES = 60;

const byId = (id) => document.getElementById(id);

/** Creates an element with attributes; string children become text nodes. */
function el(name, attributes = {}, ...children) {
  const element = document.createElement(name);
  for (const [key, value] of Object.entries(attributes)) {
    element.setAttribute(key, String(value));
  }
  element.append(...children);
  return element;
}

function fileUrl(name) {
  return `/api/files/${encodeURIComponent(name)}`;
}

function formatSize(bytes) {
  if (bytes < 1024) {
    return `${bytes} B`;
  }
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = "B";
  for (const next of units) {
    if (value < 1024) {
      break;
    }
    value /= 1024;
    unit = next;
  }
  return `${value.toFixed(1)} ${unit}`;
}

async function getJson(url) {
  const response = await fetch(url, { headers: { Accept: "application/json" } });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new Error(body.error || `${response.status} ${response.statusText}`);
  }
  return body;
}

const tagsOf = (name) => getJson(`${fileUrl(name)}/tags`);

// --- write token -----------------------------------------------------------------------

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function showTokenState(message) {
  const status = byId("token-state");
  if (message) {
    status.textContent = message;
    status.className = "bad";
  } else if (token()) {
    status.textContent = "token set for this tab";
    status.className = "ok";
  } else {
    status.textContent = "no token: read only";
    status.className = "";
  }
}

byId("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const value = byId("token").value.trim();
  if (value) {
    sessionStorage.setItem(TOKEN_KEY, value);
  }
  byId("token").value = "";
  showTokenState();
});

byId("token-forget").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  showTokenState();
});

// --- upload ----------------------------------------------------------------------------

const uploads = { queue: [], running: false, total: 0, sent: 0, done: 0 };

function tagButtons(tags, withScores) {
  const list = el("ul", { class: "tag-list" });
  for (const { tag, score } of tags) {
    const button = el("button", { type: "button", class: tag.includes(":") ? "tag facet" : "tag", "data-tag": tag }, tag);
    if (withScores) {
      button.append(el("span", { class: "score" }, score.toFixed(2)));
    }
    button.addEventListener("click", () => addTagFilter(tag));
    list.append(el("li", {}, button));
  }
  return list;
}

function uploadItem(file) {
  const status = el("span", { class: "status" }, "queued");
  const progress = el("progress", { max: Math.max(file.size, 1), value: 0 });
  const li = el("li", { "data-name": file.name }, el("span", { class: "name" }, file.name), progress, status);
  byId("upload-list").prepend(li);
  return { li, status, progress };
}

function put(file, onProgress) {
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open("PUT", fileUrl(file.name));
    request.setRequestHeader("Authorization", `Bearer ${token()}`);
    request.setRequestHeader("Content-Type", "application/octet-stream");
    request.upload.addEventListener("progress", (event) => onProgress(event.loaded));
    request.addEventListener("load", () => {
      let body = {};
      try {
        body = JSON.parse(request.responseText);
      } catch {
        body = {};
      }
      if (request.status === 201) {
        resolve({ stored: true, body });
      } else if (request.status === 503) {
        resolve({ stored: false, body });
      } else {
        if (request.status === 401) {
          showTokenState("token rejected");
        }
        reject(new Error(body.error || `HTTP ${request.status}`));
      }
    });
    request.addEventListener("error", () => reject(new Error("network error")));
    request.addEventListener("abort", () => reject(new Error("aborted")));
    request.send(file);
  });
}

function enqueue(fileList) {
  const files = Array.from(fileList);
  if (files.length === 0) {
    return;
  }
  if (!token()) {
    byId("upload-summary").textContent = "Enter the write token first.";
    showTokenState("a token is needed to upload");
    return;
  }
  for (const file of files) {
    uploads.queue.push({ file, item: uploadItem(file) });
    uploads.total += file.size;
  }
  pump();
}

function showTotal() {
  const total = byId("upload-total");
  total.hidden = false;
  total.max = Math.max(uploads.total, 1);
  total.value = uploads.sent;
  byId("upload-summary").textContent =
    `${formatSize(uploads.sent)} of ${formatSize(uploads.total)} sent, ${uploads.queue.length} waiting`;
}

async function pump() {
  if (uploads.running) {
    return;
  }
  uploads.running = true;
  while (uploads.queue.length > 0) {
    const { file, item } = uploads.queue.shift();
    const base = uploads.sent;
    item.status.textContent = "uploading…";
    showTotal();
    try {
      const result = await put(file, (loaded) => {
        item.progress.value = loaded;
        uploads.sent = base + loaded;
        showTotal();
      });
      item.progress.value = item.progress.max;
      if (result.stored) {
        item.status.textContent = `stored: ${result.body.kind}, ${formatSize(result.body.size)}; tagging…`;
      } else {
        item.status.textContent = result.body.error || "stored; indexing later";
      }
      uploads.done += 1;
      watchTags(file.name, item);
    } catch (error) {
      item.li.classList.add("failed");
      item.status.textContent = `failed: ${error.message}`;
    }
    uploads.sent = base + file.size;
  }
  uploads.running = false;
  showTotal();
  byId("upload-summary").textContent = `${uploads.done} file(s) uploaded in this tab`;
  uploads.total = 0;
  uploads.sent = 0;
  scheduleRefresh();
}

async function watchTags(name, item) {
  view.watching += 1;
  showBusy();
  try {
    for (let attempt = 0; attempt < TAG_POLL_TRIES; attempt += 1) {
      const tags = await tagsOf(name).catch(() => []);
      if (tags.length > 0) {
        item.li.classList.add("done");
        item.status.textContent = `tagged (${tags.length})`;
        item.li.append(tagButtons(tags, false));
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, TAG_POLL_MS));
    }
    item.status.textContent = "stored; no tags yet";
  } finally {
    view.watching -= 1;
    scheduleRefresh();
  }
}

const dropZone = byId("drop-zone");
for (const type of ["dragenter", "dragover"]) {
  dropZone.addEventListener(type, (event) => {
    event.preventDefault();
    dropZone.classList.add("over");
  });
}
dropZone.addEventListener("dragleave", () => dropZone.classList.remove("over"));
dropZone.addEventListener("drop", (event) => {
  event.preventDefault();
  dropZone.classList.remove("over");
  enqueue(event.dataTransfer.files);
});
// A file dropped next to the zone must not replace the page.
window.addEventListener("dragover", (event) => event.preventDefault());
window.addEventListener("drop", (event) => event.preventDefault());

byId("file-input").addEventListener("change", (event) => {
  enqueue(event.target.files);
  event.target.value = "";
});

// --- search, results and graph -----------------------------------------------------------

// `refreshTimer` is set while a refresh is scheduled, `refreshing` counts refreshes in flight
// and `watching` uploads whose tags are awaited: while any is, the results are about to change.
const view = { generation: 0, files: new Map(), refreshTimer: 0, refreshing: 0, watching: 0 };

/** Marks the results `aria-busy` while they are about to change (tests wait for this to end). */
function showBusy() {
  const busy = view.refreshTimer !== 0 || view.refreshing > 0 || view.watching > 0;
  byId("results").setAttribute("aria-busy", String(busy));
}

const graph = new ForceGraph(byId("graph"), (node) => {
  if (node.kind === "tag") {
    addTagFilter(node.label);
  } else {
    showDetails(node.label);
  }
});

function filterTags() {
  return byId("search-tags").value.split(",").map((tag) => tag.trim()).filter((tag) => tag !== "");
}

function addTagFilter(tag) {
  const tags = filterTags();
  if (!tags.includes(tag)) {
    tags.push(tag);
  }
  byId("search-tags").value = tags.join(", ");
  refresh();
}

function scheduleRefresh() {
  clearTimeout(view.refreshTimer);
  view.refreshTimer = setTimeout(() => {
    view.refreshTimer = 0;
    refresh();
  }, 100);
  showBusy();
}

async function refresh() {
  view.refreshing += 1;
  showBusy();
  try {
    await loadResults();
  } finally {
    view.refreshing -= 1;
    showBusy();
  }
}

async function loadResults() {
  view.generation += 1;
  const generation = view.generation;
  const tags = filterTags();
  const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (tags.length > 0) {
    params.set("tags", tags.join(","));
  }
  const name = byId("search-name").value.trim();
  if (name) {
    params.set("name", name);
  }
  const kind = byId("search-kind").value;
  if (kind) {
    params.set("kind", kind);
  }
  try {
    const page = await getJson(`/api/search?${params}`);
    const tagLists = await Promise.all(page.files.map((file) => tagsOf(file.name).catch(() => [])));
    if (generation === view.generation) {
      render(page, tagLists, tags);
    }
  } catch (error) {
    if (generation === view.generation) {
      byId("search-summary").textContent = `Search failed: ${error.message}`;
    }
  }
}

function render(page, tagLists, activeTags) {
  view.files = new Map(page.files.map((file) => [file.name, file]));
  const shown = page.files.length < page.total ? `, first ${page.files.length} shown` : "";
  const filter = activeTags.length > 0 ? ` with tags ${activeTags.join(" ∧ ")}` : "";
  byId("search-summary").textContent = `${page.total} file(s)${filter}${shown}`;
  const body = byId("results").tBodies[0];
  body.replaceChildren();
  page.files.forEach((file, i) => {
    const link = el("a", { href: fileUrl(file.name), download: file.name }, file.name);
    const tags = tagLists[i].length > 0
      ? tagButtons(tagLists[i], false)
      : el("span", { class: "pending" }, "not tagged yet");
    body.append(el("tr", { "data-name": file.name },
      el("td", { class: "name" }, link),
      el("td", { class: "size" }, formatSize(file.size)),
      el("td", { class: "kind" }, file.kind),
      el("td", { class: "tags" }, tags)));
  });

  const nodes = [];
  const edges = [];
  const tagNodes = new Map();
  page.files.slice(0, GRAPH_FILES).forEach((file, i) => {
    const id = `file:${file.name}`;
    nodes.push({ id, kind: "file", label: file.name, classes: [`kind-${file.kind}`] });
    for (const { tag, score } of tagLists[i]) {
      const tagId = `tag:${tag}`;
      if (!tagNodes.has(tagId)) {
        const classes = [];
        if (tag.includes(":")) {
          classes.push("facet");
        }
        if (activeTags.includes(tag)) {
          classes.push("active");
        }
        tagNodes.set(tagId, { id: tagId, kind: "tag", label: tag, classes });
      }
      edges.push({ source: id, target: tagId, score });
    }
  });
  nodes.push(...tagNodes.values());
  graph.setData(nodes, edges, page.total === 0 ? "No files match." : "");
}

async function fileMeta(name) {
  if (view.files.has(name)) {
    return view.files.get(name);
  }
  const page = await getJson(`/api/search?${new URLSearchParams({ name, limit: "1000" })}`);
  return page.files.find((file) => file.name === name);
}

async function showDetails(name) {
  const details = byId("details");
  try {
    const [meta, tags, neighbourhood] = await Promise.all([
      fileMeta(name),
      tagsOf(name),
      getJson(`/api/graph?${new URLSearchParams({ file: name, limit: "20" })}`),
    ]);
    byId("details-name").textContent = name;
    byId("details-meta").textContent = meta
      ? `${meta.kind} · ${formatSize(meta.size)} · sha256 ${meta.sha256.slice(0, 16)}…`
      : "";
    const download = byId("details-download");
    download.href = fileUrl(name);
    download.setAttribute("download", name);
    byId("details-tags").replaceWith(Object.assign(tagButtons(tags, true), { id: "details-tags" }));
    const related = byId("details-related");
    related.replaceChildren();
    for (const node of neighbourhood.nodes) {
      if (node.kind === "file" && node.label !== name) {
        const button = el("button", { type: "button" }, node.label);
        button.addEventListener("click", () => showDetails(node.label));
        related.append(el("li", {}, button));
      }
    }
    if (related.childElementCount === 0) {
      related.append(el("li", { class: "pending" }, "none"));
    }
    details.dataset.name = name;
    details.hidden = false;
  } catch (error) {
    byId("details-name").textContent = name;
    byId("details-meta").textContent = `Could not load: ${error.message}`;
    details.hidden = false;
  }
}

byId("search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  refresh();
});

byId("search-clear").addEventListener("click", () => {
  byId("search-form").reset();
  refresh();
});

showTokenState();
refresh();
