// isolane's live page: the runs, and one run followed over its WebSocket.
//
// State of the open run is folded from its events, in seq order, exactly as they arrive:
//   dag_created / dag_node_added  -> graph nodes and edges (branch points drawn as diamonds)
//   dag_node_update               -> node status (colour), without re-layout
//   llm_call                      -> refetch GET /api/runs/{id}/cost (the one rollup the CLI and
//                                    REST use: billed tokens, cached and unpriced calls, cost)
//   agent_message / handoff       -> conversation
//   human_input_request/_response -> questions waiting   file_created/_modified  -> files
// The socket resumes with ?since=<last seq> after a drop, so nothing is missed or shown twice.
"use strict";

(function () {
  const MAX_EVENT_ROWS = 400;
  const MAX_CHAT_ROWS = 500;
  const $ = (id) => document.getElementById(id);
  const el = (tag, attrs, ...kids) => {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null) continue;
      if (k === "class") node.className = v;
      else if (k.startsWith("data-")) node.setAttribute(k, v);
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node[k] = v;
    }
    for (const kid of kids) node.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    return node;
  };
  const short = (text, n) => (text.length > n ? text.slice(0, n - 1) + "…" : text);
  const asText = (value) => (typeof value === "string" ? value : value == null ? "" : JSON.stringify(value));

  async function api(path, options) {
    const response = await fetch(path, Object.assign({ credentials: "same-origin" }, options || {}));
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.error || response.statusText);
    return body;
  }

  // -- runs list --------------------------------------------------------------------------------

  let currentRunId = null;

  async function refreshRuns() {
    let data;
    try { data = await api("/api/runs?limit=100"); } catch (err) { return; }
    const list = $("runs");
    const byParent = {};
    for (const run of data.runs) (byParent[run.parent_run_id || ""] ||= []).push(run);
    const rows = [];
    const add = (run, depth) => {
      const label = run.name || run.workflow;
      const link = el("a", { href: "/runs/" + run.id, class: run.id === currentRunId ? "selected" : "",
                             onclick: (e) => { e.preventDefault(); openRun(run.id, true); } },
        el("span", { class: "wf" }, short(label, 28)), " ",
        el("span", { class: "badge", "data-status": run.status }, run.status),
        el("div", { class: "meta" }, run.id.slice(0, 8) + (run.branch_point_node ? " ⑂ " + run.branch_point_node : "")
           + (run.task ? " · " + short(run.task, 30) : "")));
      rows.push(el("li", { class: depth ? "child" : "", "data-run-id": run.id }, link));
      for (const child of byParent[run.id] || []) add(child, depth + 1);
    };
    const ids = new Set(data.runs.map((r) => r.id));
    for (const run of data.runs) if (!run.parent_run_id || !ids.has(run.parent_run_id)) add(run, 0);
    list.replaceChildren(...rows);
  }

  $("submit").addEventListener("submit", async (e) => {
    e.preventDefault();
    const form = e.target;
    $("submit-error").textContent = "";
    try {
      const made = await api("/api/runs", {
        method: "POST", headers: { "content-type": "application/json" },
        body: JSON.stringify({ workflow: form.workflow.value, task: form.task.value }),
      });
      form.reset();
      await refreshRuns();
      openRun(made.run_id, true);
    } catch (err) { $("submit-error").textContent = err.message; }
  });

  // -- one run ------------------------------------------------------------------------------------

  let run = null;     // the folded state of the open run
  let socket = null;
  let retry = 0;

  function freshState(runId) {
    return { id: runId, lastSeq: 0, ended: false, status: "", phase: "", nodes: new Map(), edges: new Set(),
             requests: new Map(), cost: null, costDue: false, costBusy: false, files: new Map(), events: 0,
             layoutDue: false };
  }

  const graph = cytoscape({
    container: $("dag"),
    elements: [],
    wheelSensitivity: 0.3,
    maxZoom: 1.4,
    style: [
      { selector: "node", style: {
        "label": "data(label)", "font-size": 11, "text-valign": "center", "text-halign": "center",
        "shape": "round-rectangle", "width": "label", "height": 26, "padding": "8px",
        "background-color": "#b8bfcc", "color": "#fff", "text-wrap": "ellipsis", "text-max-width": 160,
        "border-width": 0 } },
      { selector: "node[status = 'running']", style: { "background-color": "#2f6fde", "border-width": 3, "border-color": "#a9c4f5" } },
      { selector: "node[status = 'completed']", style: { "background-color": "#2e9d5b" } },
      { selector: "node[status = 'failed']", style: { "background-color": "#d64541" } },
      { selector: "node[status = 'cancelled']", style: { "background-color": "#8a6d3b" } },
      { selector: "node[status = 'skipped']", style: { "background-color": "#a0a7b4" } },
      { selector: "node[type = 'branch_point']", style: { "shape": "diamond", "width": 44, "height": 44, "padding": 0, "text-valign": "bottom", "color": "#1d2330" } },
      { selector: "node[asking = 'yes']", style: { "border-width": 3, "border-color": "#ffb020" } },
      { selector: "edge", style: { "width": 1.5, "line-color": "#c3c9d5", "target-arrow-color": "#c3c9d5",
        "target-arrow-shape": "triangle", "curve-style": "bezier" } },
      { selector: "edge[kind = 'contains']", style: { "line-style": "dashed", "target-arrow-shape": "none" } },
      { selector: "edge[kind = 'branch']", style: { "line-color": "#8e5bd6", "target-arrow-color": "#8e5bd6" } },
    ],
  });

  function relayout() {
    if (!run || !run.layoutDue) return;
    run.layoutDue = false;
    const roots = graph.nodes().roots();
    graph.layout({ name: "breadthfirst", directed: true, spacingFactor: 1.05, padding: 16,
                   roots: roots.length ? roots : undefined, animate: false }).run();
    graph.fit(undefined, 16);
  }
  setInterval(relayout, 250); // batches bursts of new nodes into one layout

  function addNode(id, label, type, status, parent) {
    if (!run.nodes.has(id)) {
      run.nodes.set(id, { id, label: label || id, type: type || "step", status: status || "pending", parent });
      graph.add({ group: "nodes", data: { id, label: label || id, type: type || "step", status: status || "pending" } });
      run.layoutDue = true;
    }
    return run.nodes.get(id);
  }

  function addEdge(source, target, kind) {
    const key = source + "\u0000" + target;
    if (run.edges.has(key) || source === target) return;
    if (!run.nodes.has(source)) addNode(source);
    if (!run.nodes.has(target)) addNode(target);
    run.edges.add(key);
    graph.add({ group: "edges", data: { id: "e" + run.edges.size, source, target, kind: kind || "next" } });
    run.layoutDue = true;
  }

  function setStatus(id, status) {
    const node = addNode(id);
    node.status = status;
    graph.getElementById(id).data("status", status);
  }

  function apply(event) {
    const d = event.data || {};
    switch (event.type) {
      case "run_started": run.status = "running"; break;
      case "run_completed": run.status = "completed"; break;
      case "run_failed": run.status = "failed"; break;
      case "run_cancelled": run.status = "cancelled"; break;
      case "phase_change": run.phase = d.phase || ""; break;
      case "dag_created":
        for (const n of d.nodes || []) addNode(n.id, n.label, n.node_type, "pending", n.parent_node_id);
        for (const e of d.edges || []) addEdge(e.source, e.target, e.kind);
        break;
      case "dag_node_added": {
        const id = event.node_id;
        addNode(id, d.label, d.node_type, "pending", d.parent_node_id);
        const after = d.after || [];
        for (const a of after) addEdge(a, id, d.node_type === "branch_point" ? "branch" : "next");
        if (d.parent_node_id && !after.includes(d.parent_node_id)) addEdge(d.parent_node_id, id, "contains");
        break;
      }
      case "dag_node_update": if (event.node_id) setStatus(event.node_id, d.status); break;
      case "llm_call": refreshCost(); break;
      case "agent_message":
        if (!d.silent) chat(d.sender, d.recipient, asText(d.content), false);
        break;
      case "handoff": chat("→ " + d.to_agent, null, d.reason || "handoff" + (d.from_agent ? " from " + d.from_agent : ""), false); break;
      case "human_input_request":
        run.requests.set(d.request_id, { id: d.request_id, prompt: d.prompt, kind: d.kind || "text",
                                         agent: d.agent, node: event.node_id });
        if (event.node_id && graph.getElementById(event.node_id).nonempty()) graph.getElementById(event.node_id).data("asking", "yes");
        break;
      case "human_input_response": {
        const asked = run.requests.get(d.request_id);
        run.requests.delete(d.request_id);
        if (asked && asked.node) graph.getElementById(asked.node).data("asking", "no");
        chat("you", asked ? asked.agent : null, d.timed_out ? "(no answer: timed out)" : asText(d.text), true);
        break;
      }
      case "file_created": case "file_modified":
        run.files.set(d.path, { size: d.size, version: d.version || 1 });
        break;
    }
    run.events += 1;
    logEvent(event);
  }

  function chat(who, to, text, human) {
    const list = $("chat");
    list.append(el("li", { class: human ? "human" : "" }, el("span", { class: "who" }, who || "?"),
                   to ? el("span", { class: "to" }, "→ " + to + " ") : "", short(text, 4000)));
    while (list.children.length > MAX_CHAT_ROWS) list.firstChild.remove();
    list.scrollTop = list.scrollHeight;
  }

  function logEvent(event) {
    const list = $("events");
    const summary = event.type === "output" ? asText(event.data.text)
      : event.type === "custom" ? asText(event.data.name) : JSON.stringify(event.data);
    list.append(el("li", {}, el("span", { class: "seq" }, event.seq), event.type,
                   event.node_id ? " [" + event.node_id + "] " : " ", short(summary || "", 200)));
    while (list.children.length > MAX_EVENT_ROWS) list.firstChild.remove();
  }

  function render() {
    if (!run) return;
    $("run-status").textContent = run.status || "…";
    $("run-status").dataset.status = run.status;
    $("run-phase").textContent = run.phase ? "phase: " + run.phase : "";
    $("cancel").hidden = run.ended;
    $("event-count").textContent = run.events + " (last seq " + run.lastSeq + ")";
    const nodes = [...run.nodes.values()];
    $("dag-summary").textContent = nodes.filter((n) => n.status === "completed").length + "/" + nodes.length + " completed";
    $("nodes").replaceChildren(...nodes.map((n) =>
      el("li", { "data-node-id": n.id, "data-status": n.status, title: n.status }, short(n.label, 40))));
    // cost: as the server rolled it up (never summed here, so the page says what the CLI says)
    const cost = run.cost;
    const rows = cost ? Object.entries(cost.by_model).map(([model, t]) =>
      el("tr", {}, el("td", {}, model), el("td", {}, t.calls), el("td", {}, t.cached_calls || ""),
         el("td", {}, t.total_tokens), el("td", {}, t.cost == null ? "unpriced" : t.cost.toFixed(4)))) : [];
    $("cost").tBodies[0].replaceChildren(...rows);
    $("cost-total").textContent = !cost || !cost.calls ? ""
      : (cost.cost == null ? "unpriced (" + cost.unpriced_calls + " calls)" : "$" + cost.cost.toFixed(4)
         + (cost.unpriced_calls ? " + " + cost.unpriced_calls + " unpriced" : ""))
        + (cost.cached_calls ? " · " + cost.cached_calls + " cached" : "");
    // files
    const files = [...run.files.entries()].map(([path, f]) => el("li", {}, path + "  (" + f.size + " B, v" + f.version + ")"));
    $("files").replaceChildren(...(files.length ? files : [el("li", { class: "muted" }, "none yet")]));
    renderRequests();
  }

  let renderedRequests = "";
  function renderRequests() {
    const key = [...run.requests.keys()].join("|") + (run.ended ? "#" : "");
    if (key === renderedRequests) return; // keep what the person is typing
    renderedRequests = key;
    const box = $("requests");
    if (!run.requests.size) { box.replaceChildren(el("p", { class: "muted" }, "no questions")); return; }
    box.replaceChildren(...[...run.requests.values()].map((r) => {
      const input = el("textarea", { rows: 2, placeholder: r.kind === "approval" ? "feedback (optional)" : "your answer" });
      const send = (text) => answer(r.id, text, error);
      const error = el("p", { class: "error" });
      const actions = r.kind === "approval"
        ? [el("button", { class: "primary", type: "button", onclick: () => send("approve") }, "Approve"),
           el("button", { type: "button", onclick: () => send(input.value.trim() || "reject") }, "Reject")]
        : [el("button", { class: "primary", type: "button", onclick: () => send(input.value) }, "Answer")];
      return el("div", { class: "request", "data-request-id": r.id },
        el("p", { class: "prompt" }, (r.agent ? r.agent + " asks: " : "") + r.prompt),
        r.kind === "password" ? el("p", { class: "muted" }, "(answer is not stored)") : "",
        input, el("div", { class: "actions" }, ...actions), error);
    }));
  }

  async function answer(requestId, text, errorNode) {
    errorNode.textContent = "";
    try {
      await api("/api/runs/" + run.id + "/answer", {
        method: "POST", headers: { "content-type": "application/json" },
        body: JSON.stringify({ request_id: requestId, text }),
      });
    } catch (err) { errorNode.textContent = err.message; }
  }

  $("cancel").addEventListener("click", async () => {
    if (run) { try { await api("/api/runs/" + run.id + "/cancel", { method: "POST" }); } catch (err) { /* shown by status */ } }
  });

  // The run's cost from the server: at most one request in flight, one more if calls came meanwhile.
  function refreshCost() {
    const mine = run;
    if (!mine) return;
    if (mine.costBusy) { mine.costDue = true; return; }
    mine.costBusy = true;
    mine.costDue = false;
    api("/api/runs/" + mine.id + "/cost").then((data) => {
      if (run === mine) { mine.cost = data; scheduleRender(); }
    }).catch(() => {}).finally(() => {
      mine.costBusy = false;
      if (mine.costDue && run === mine) setTimeout(refreshCost, 500);
    });
  }

  function setConn(state, text) { $("conn").dataset.state = state; $("conn").textContent = text; }

  let renderDue = false;
  function scheduleRender() {
    if (renderDue) return;
    renderDue = true;
    requestAnimationFrame(() => { renderDue = false; render(); });
  }

  function connect() {
    if (!run || run.ended) return;
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(proto + "//" + location.host + "/ws/runs/" + run.id + "?since=" + run.lastSeq);
    const mine = run;
    socket = ws;
    ws.onopen = () => { retry = 0; setConn("live", "live"); };
    ws.onmessage = (message) => {
      if (run !== mine) return;
      for (const line of message.data.split("\n")) receive(JSON.parse(line));
      scheduleRender();
    };
    const receive = (frame) => {
      if (frame.seq !== undefined) {
        if (frame.seq <= run.lastSeq) return; // never apply an event twice
        run.lastSeq = frame.seq;
        apply(frame);
      } else if (frame.type === "lagged") {
        setConn("lagged", "catching up after seq " + frame.last_seq);
      } else if (frame.type === "end") {
        run.ended = true;
        run.status = frame.status;
        setConn("idle", "run ended: " + frame.status);
        refreshRuns();
        refreshCost();
      }
    };
    ws.onclose = (e) => {
      if (socket === ws) socket = null;
      if (run !== mine || run.ended) return;
      setConn("idle", "reconnecting…" + (e.reason ? " (" + e.reason + ")" : ""));
      retry = Math.min(retry + 1, 6);
      setTimeout(() => { if (run === mine && !socket) connect(); }, 200 * 2 ** retry);
    };
  }

  function openRun(runId, push) {
    if (socket) { const s = socket; socket = null; s.close(); }
    currentRunId = runId;
    if (push) history.pushState({ runId }, "", "/runs/" + runId);
    run = freshState(runId);
    renderedRequests = "";
    graph.elements().remove();
    $("chat").replaceChildren();
    $("events").replaceChildren();
    $("run-title").textContent = runId.slice(0, 12);
    $("run").hidden = false;
    $("empty").hidden = true;
    for (const a of document.querySelectorAll("#runs a")) a.classList.toggle("selected", a.getAttribute("href") === "/runs/" + runId);
    api("/api/runs/" + runId).then((info) => {
      if (run && run.id === runId) {
        $("run-title").textContent = (info.run.name || info.run.workflow) + " · " + runId.slice(0, 8);
        if (!run.status) run.status = info.run.status;
        scheduleRender();
      }
    }).catch((err) => setConn("idle", err.message));
    render();
    refreshCost();
    connect();
  }

  window.addEventListener("popstate", () => {
    const m = location.pathname.match(/^\/runs\/([^/]+)/);
    if (m) openRun(m[1], false);
  });

  // Exposed for tests and the curious: the folded state of the open run.
  window.isolanePage = { state: () => run, graph };

  refreshRuns();
  setInterval(refreshRuns, 3000);
  const m = location.pathname.match(/^\/runs\/([^/]+)/);
  if (m) openRun(m[1], false);
})();
