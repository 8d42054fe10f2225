// The labeling widget's view. Every piece of untrusted text (sample texts, class names, file
// names, error messages) reaches the DOM through textContent, never innerHTML.
// Actions go to Python as messages; a tile turns "done" only when Python reports the commit.

const DIGITS = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "0"];
const PNG_PREFIX = "data:image/png;base64,";

function h(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

// A probability as a percentage; "100%" only when the model is certain, so a 99.6% guess does
// not read as a sure one.
function fmtPct(p) {
  const v = typeof p === "number" ? p : 0;
  if (v >= 0.995 && v < 1) return ">99%";
  return `${Math.round(v * 100)}%`;
}

function fmtNumber(v) {
  if (typeof v !== "number") return String(v);
  if (Number.isInteger(v)) return v.toLocaleString();
  return Math.abs(v) >= 100 ? v.toFixed(1) : v.toPrecision(3);
}

function renderSample(sample, big) {
  const box = h("div", "dal-sample dal-sample-" + (sample && sample.type));
  if (!sample) return box;
  if (sample.type === "image") {
    const img = h("img");
    // Only our own PNG data URLs are shown; anything else would be a bug or an attack.
    if (typeof sample.src === "string" && sample.src.startsWith(PNG_PREFIX)) img.src = sample.src;
    img.alt = "";
    img.draggable = false;
    if (big) img.classList.add("dal-big");
    box.appendChild(img);
  } else if (sample.type === "text") {
    box.appendChild(h("div", big ? "dal-text dal-big" : "dal-text", sample.text));
  } else if (sample.type === "table") {
    const table = h("table", "dal-row");
    for (const [k, v] of Object.entries(sample.row || {})) {
      const tr = h("tr");
      tr.appendChild(h("th", null, k));
      tr.appendChild(h("td", null, fmtNumber(v)));
      table.appendChild(tr);
    }
    box.appendChild(table);
  }
  return box;
}

function render({ model, el }) {
  el.classList.add("dal-labeler");
  el.tabIndex = 0;
  el.setAttribute("data-lm-suppress-shortcuts", "true");
  el.replaceChildren();

  // ---- skeleton
  const header = h("div", "dal-header");
  const progressText = h("div", "dal-progress-text");
  const bar = h("div", "dal-bar");
  const barFill = h("div", "dal-bar-fill");
  bar.appendChild(barFill);
  const buttons = h("div", "dal-buttons");
  const mkButton = (label, title, onClick, parent = buttons) => {
    const b = h("button", "dal-btn", label);
    b.type = "button";
    b.title = title;
    b.addEventListener("click", (e) => { e.stopPropagation(); onClick(); el.focus(); });
    parent.appendChild(b);
    return b;
  };
  const viewBtn = mkButton("Single", "Toggle grid / one at a time (V)", () => act({ action: "view" }));
  mkButton("Undo", "Undo the last action (Backspace)", () => act({ action: "undo" }));
  mkButton("Skip", "Skip this sample (S)", () => act({ action: "skip" }));
  const acceptBtn = mkButton("Accept page", "Label every pending sample here with the model's suggestion (Shift+Enter); Backspace undoes it", () => acceptPage());
  acceptBtn.classList.add("dal-accept");
  const nextBtn = mkButton("Next batch", "Show the next batch (N)", () => act({ action: "next" }));
  mkButton("?", "Keyboard shortcuts (?)", () => toggleHelp());
  const headLeft = h("div", "dal-head-left");
  headLeft.append(progressText, bar);
  header.append(headLeft, buttons);

  // The open review (a map selection, the labeled samples of a class, ...): what it shows,
  // its page and its buttons. Hidden while the query batch is shown.
  const reviewBar = h("div", "dal-review");
  const reviewText = h("div", "dal-review-text");
  const reviewButtons = h("div", "dal-buttons");
  reviewBar.append(reviewText, reviewButtons);
  const prevBtn = mkButton("\u2039 Previous", "Previous page (P or PageUp)", () => act({ action: "page", delta: -1 }), reviewButtons);
  const nextPageBtn = mkButton("Next page \u203a", "Next page (N or PageDown)", () => act({ action: "page", delta: 1 }), reviewButtons);
  mkButton("Back to batch", "End the review: back to the query batch (B)", () => act({ action: "end_review" }), reviewButtons);
  reviewBar.style.display = "none";

  const body = h("div", "dal-body");
  const gallery = h("div", "dal-gallery");
  const card = h("div", "dal-card");
  body.append(gallery, card);

  const classBar = h("div", "dal-classes");
  const typeahead = h("input", "dal-typeahead");
  typeahead.type = "text";
  typeahead.placeholder = "type a class name (/)";
  typeahead.setAttribute("aria-label", "type a class name");
  const matches = h("div", "dal-matches");
  const addBox = h("input", "dal-addclass");
  addBox.type = "text";
  addBox.placeholder = "new class, Enter";
  addBox.style.display = "none";

  const footer = h("div", "dal-footer");
  const message = h("div", "dal-message");
  const errorLine = h("div", "dal-error");
  const hint = h("div", "dal-hint");
  footer.append(message, errorLine, hint);

  const help = h("div", "dal-help");
  help.style.display = "none";
  const zoomLayer = h("div", "dal-zoom");
  zoomLayer.style.display = "none";
  zoomLayer.addEventListener("click", () => closeZoom());

  el.append(header, reviewBar, body, classBar, footer, help, zoomLayer);

  // ---- state local to the view
  let inflight = 0; // seq of the message Python has not acknowledged yet (0 = none)
  let seq = 0;
  const queue = [];
  const saving = new Set();
  let matchIndex = 0;
  // Multi-label: the classes toggled for the sample under the cursor, saved with Enter.
  const selection = new Set();
  let selectionKey;
  const showLabel = (v) => (Array.isArray(v) ? (v.length ? v.join(", ") : "(none)") : String(v));

  const items = () => model.get("items") || [];
  const review = () => model.get("review_info") || {};
  const reviewing = () => Boolean(review().pages);
  let reviewToken = review().token; // a review opened after this view was drawn takes the focus
  const states = () => model.get("states") || {};
  const classes = () => model.get("classes") || [];
  const cursor = () => Math.min(model.get("cursor") || 0, Math.max(items().length - 1, 0));
  const cursorKey = () => (items()[cursor()] || {}).key;
  // Keys for the classes: the class names themselves when they are distinct single characters
  // that are not shortcuts (digits 0-9 label digits 0-9), else 1-9 and 0 by position.
  const keysFor = (cls) => {
    const reserved = new Set(["s", "f", "v", "z", "n", "?", "/", " "]);
    const own = cls.length <= 36 && cls.every((c) => c.length === 1 && !reserved.has(c.toLowerCase()))
      && new Set(cls.map((c) => c.toLowerCase())).size === cls.length;
    return own ? cls.map((c) => c.toLowerCase()) : DIGITS.slice(0, Math.min(cls.length, 10));
  };

  // Cursor-relative actions carry no key until they are sent, so a key pressed while the
  // previous action is in flight acts on the sample the cursor will be on by then.
  const CURSOR_ACTIONS = ["label", "skip", "accept", "flag", "zoom"];

  function send(msg) {
    if (msg.key === undefined && CURSOR_ACTIONS.includes(msg.action)) msg.key = cursorKey();
    if (msg.key === undefined && CURSOR_ACTIONS.includes(msg.action)) return;
    seq += 1;
    inflight = seq;
    if (msg.action === "label" || msg.action === "skip" || msg.action === "accept") saving.add(msg.key);
    model.send({ ...msg, seq });
    drawTiles();
  }

  // Actions wait for the previous one to be acknowledged, so fast typing cannot label the same
  // sample twice or act on a cursor that Python is about to move.
  function act(msg) {
    if (inflight) queue.push(msg);
    else send(msg);
  }

  function flush() {
    while (!inflight && queue.length) {
      const msg = queue.shift();
      if (msg.action === "local-move") moveCursor(msg.delta);
      else send(msg);
    }
  }

  model.on("change:ack", () => {
    if (model.get("ack") >= inflight) {
      inflight = 0;
      saving.clear();
      flush();
    }
  });

  function columns() {
    const tiles = gallery.querySelectorAll(".dal-tile");
    if (tiles.length < 2 || model.get("view") !== "grid") return 1;
    const top = tiles[0].offsetTop;
    let n = 0;
    for (const t of tiles) {
      if (t.offsetTop !== top) break;
      n += 1;
    }
    return Math.max(n, 1);
  }

  function moveCursor(delta) {
    const n = items().length;
    if (!n) return;
    const next = Math.max(0, Math.min(n - 1, cursor() + delta));
    model.set("cursor", next);
    model.save_changes();
  }

  function labelWith(name) {
    if (!model.get("multi_label")) {
      act({ action: "label", label: name });
      return;
    }
    if (selectionKey !== cursorKey()) {
      selection.clear();
      selectionKey = cursorKey();
    }
    if (selection.has(name)) selection.delete(name);
    else selection.add(name);
    drawTiles();
    drawClasses();
  }

  // The tiles the person sees now go with the message, so a Shift+Enter typed while a page
  // turn is in flight never accepts the samples of a page nobody looked at.
  function acceptable() {
    const st = states();
    return items().filter((it) => it.suggestion !== null && it.suggestion !== undefined
      && (st[it.key] || { status: "pending" }).status === "pending" && !saving.has(it.key));
  }

  function acceptPage() {
    act({ action: "accept_page", keys: acceptable().map((it) => it.key) });
  }

  function commit() {
    // Multi-label: save the toggled set; with nothing toggled, accept the model's set.
    if (model.get("multi_label") && selection.size && selectionKey === cursorKey()) {
      const order = classes();
      act({ action: "label", label: [...selection].sort((a, b) => order.indexOf(a) - order.indexOf(b)) });
      selection.clear();
      drawClasses();
    } else {
      act({ action: "accept" });
    }
  }

  // ---- drawing
  function drawProgress() {
    const p = model.get("progress") || {};
    const parts = [];
    if (p.team) {
      parts.push(`${fmtNumber(p.team.mine)} by ${p.team.annotator}`);
      parts.push(`team: ${fmtNumber(p.labeled || 0)} labeled${p.team.trainer ? ", trained here" : ""}`);
    } else {
      parts.push(p.budget ? `${fmtNumber(p.labeled)} / ${fmtNumber(p.budget)} labeled` : `${fmtNumber(p.labeled || 0)} labeled`);
    }
    if (p.per_minute) parts.push(`${p.per_minute} per min`);
    if (p.model_version) parts.push(`model v${p.model_version}, ${p.staleness} label${p.staleness === 1 ? "" : "s"} behind`);
    else parts.push("no model yet");
    if (p.training) parts.push("training\u2026");
    if (p.train_error) parts.push("training failed");
    if (p.encoder_note) parts.push(p.encoder_note);
    if (p.round) parts.push(`round ${p.round} (${p.strategy})`);
    progressText.textContent = parts.join(" \u00b7 ");
    const frac = p.budget ? Math.min(1, (p.labeled || 0) / p.budget) : 0;
    barFill.style.width = `${(frac * 100).toFixed(1)}%`;
    bar.style.display = p.budget ? "" : "none";
  }

  function drawTiles() {
    const its = items();
    const st = states();
    const cur = cursor();
    const single = model.get("view") === "single";
    gallery.classList.toggle("dal-single", single);
    viewBtn.textContent = single ? "Grid" : "Single";
    gallery.replaceChildren();
    its.forEach((it, i) => {
      if (single && i !== cur) return;
      const s = st[it.key] || { status: "pending" };
      const tile = h("div", "dal-tile");
      tile.setAttribute("data-sample-id", it.key);
      tile.dataset.status = saving.has(it.key) && s.status === "pending" ? "saving" : s.status;
      if (i === cur) tile.classList.add("dal-cursor");
      if (s.flagged) tile.classList.add("dal-flagged");
      tile.appendChild(renderSample(it.sample, single));
      const badge = h("div", "dal-badge");
      const toggled = model.get("multi_label") && i === cur && selectionKey === it.key && selection.size;
      if (toggled) badge.textContent = [...selection].join(" + ") + " \u2026 Enter";
      else if (s.status === "done") {
        badge.textContent = "\u2713 " + showLabel(s.label);
        // A review of labels: where the model thinks otherwise, say so (likely label errors).
        if (it.suggestion !== null && it.suggestion !== undefined && showLabel(it.suggestion) !== showLabel(s.label)) {
          badge.appendChild(h("span", "dal-disagree", ` \u00b7 model: ${showLabel(it.suggestion)} ${fmtPct(it.prob)}`));
          tile.classList.add("dal-disagrees");
        }
      }
      else if (s.status === "skipped") badge.textContent = "skipped";
      else if (tile.dataset.status === "saving") badge.textContent = "saving\u2026";
      else if (it.suggestion !== null && it.suggestion !== undefined) {
        badge.textContent = `${showLabel(it.suggestion)}? ${fmtPct(it.prob)}`;
        badge.classList.add("dal-suggest");
      }
      tile.appendChild(badge);
      if (it.votes) tile.appendChild(h("div", "dal-votes", it.votes));
      if (s.flagged) tile.appendChild(h("div", "dal-flag", "\u2691"));
      tile.addEventListener("click", () => {
        el.focus();
        if (inflight) queue.push({ action: "select", key: it.key });
        else { model.set("cursor", i); model.save_changes(); }
      });
      gallery.appendChild(tile);
    });
    if (!its.length) gallery.appendChild(h("div", "dal-empty", model.get("loading") ? "Picking samples\u2026" : "Nothing to label."));
    acceptBtn.style.display = acceptable().length ? "" : "none";
    drawCard();
  }

  function drawCard() {
    card.replaceChildren();
    const it = items()[cursor()];
    if (!it) return;
    card.appendChild(h("div", "dal-card-title", "Why this sample"));
    if (it.votes) card.appendChild(h("div", "dal-card-line dal-votes-line", `Labels: ${it.votes} \u2014 a class key decides`));
    if (it.suggestion !== null && it.suggestion !== undefined) {
      card.appendChild(h("div", "dal-card-line", `Suggestion: ${showLabel(it.suggestion)} (${fmtPct(it.prob)}) \u2014 Enter accepts`));
    } else {
      card.appendChild(h("div", "dal-card-line", "No model yet: no suggestion."));
    }
    if (Array.isArray(it.probs)) {
      const cls = classes();
      const top = it.probs.map((p, i) => [p, i]).sort((a, b) => b[0] - a[0]).slice(0, 5);
      for (const [p, i] of top) {
        const row = h("div", "dal-prob");
        row.appendChild(h("span", "dal-prob-name", cls[i] !== undefined ? cls[i] : String(i)));
        const track = h("span", "dal-prob-track");
        const fill = h("span", "dal-prob-fill");
        fill.style.width = `${(p * 100).toFixed(1)}%`;
        track.appendChild(fill);
        row.appendChild(track);
        row.appendChild(h("span", "dal-prob-value", `${(p * 100).toFixed(0)}%`));
        card.appendChild(row);
      }
    }
    if (it.strategy && it.strategy.startsWith("random")) {
      card.appendChild(h("div", "dal-card-line dal-muted", `picked at random: ${it.strategy}`));
    } else if (it.strategy) {
      const score = it.score === null || it.score === undefined ? "" : `score ${fmtNumber(it.score)}, `;
      const rank = it.rank ? `rank ${fmtNumber(it.rank)} of ${fmtNumber(it.candidates)}` : "";
      card.appendChild(h("div", "dal-card-line dal-muted", `${it.strategy}: ${score}${rank}`));
    }
    card.appendChild(h("div", "dal-card-line dal-muted", `id ${it.key}`));
  }

  function drawClasses() {
    classBar.replaceChildren();
    const cls = classes();
    const keys = keysFor(cls);
    cls.slice(0, keys.length).forEach((name, i) => {
      const b = h("button", "dal-class");
      b.type = "button";
      b.appendChild(h("kbd", null, keys[i]));
      if (keys[i] !== name.toLowerCase()) b.appendChild(h("span", null, name));
      b.title = model.get("multi_label") ? `Toggle ${name} (key ${keys[i]}); Enter saves` : `Label as ${name} (key ${keys[i]})`;
      if (selection.has(name) && selectionKey === cursorKey()) b.classList.add("dal-active");
      b.addEventListener("click", (e) => { e.stopPropagation(); labelWith(name); el.focus(); });
      classBar.appendChild(b);
    });
    if (cls.length > keys.length) {
      classBar.appendChild(typeahead);
      classBar.appendChild(matches);
      drawMatches();
    }
    const add = h("button", "dal-class dal-add", "+ class");
    add.type = "button";
    add.title = "Add a class";
    add.addEventListener("click", (e) => {
      e.stopPropagation();
      addBox.style.display = "";
      addBox.focus();
    });
    classBar.appendChild(add);
    classBar.appendChild(addBox);
  }

  function matching() {
    const q = typeahead.value.trim().toLowerCase();
    const cls = classes();
    if (!q) return [];
    const starts = cls.filter((c) => c.toLowerCase().startsWith(q));
    const contains = cls.filter((c) => !c.toLowerCase().startsWith(q) && c.toLowerCase().includes(q));
    return starts.concat(contains).slice(0, 8);
  }

  function drawMatches() {
    matches.replaceChildren();
    const found = matching();
    matchIndex = Math.min(matchIndex, Math.max(found.length - 1, 0));
    found.forEach((name, i) => {
      const m = h("button", i === matchIndex ? "dal-match dal-active" : "dal-match", name);
      m.type = "button";
      m.addEventListener("click", (e) => { e.stopPropagation(); pickMatch(name); });
      matches.appendChild(m);
    });
  }

  function pickMatch(name) {
    typeahead.value = "";
    drawMatches();
    labelWith(name);
    el.focus();
  }

  function drawReview() {
    const r = review();
    const on = reviewing();
    reviewBar.style.display = on ? "" : "none";
    nextBtn.style.display = on ? "none" : "";
    if (on) {
      const n = fmtNumber(r.n);
      reviewText.textContent = `Review: ${n} sample${r.n === 1 ? "" : "s"}${r.title ? " " + r.title : ""} \u00b7 page ${r.page}/${r.pages} \u00b7 ${r.how || ""}`;
      prevBtn.disabled = r.page <= 1;
      nextPageBtn.textContent = r.page >= r.pages ? "Done \u203a" : "Next page \u203a";
      nextPageBtn.title = r.page >= r.pages ? "Last page: end the review (N)" : "Next page (N or PageDown)";
    }
    // A review opened after this view was drawn (e.g. "Label these" on the map, whose button
    // had the focus) takes the keyboard, unless the person is typing somewhere else.
    if (on && r.token !== reviewToken) {
      const a = document.activeElement;
      const typing = a && !el.contains(a) && (a.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(a.tagName));
      if (!typing) el.focus();
    }
    reviewToken = r.token;
  }

  function drawMessages() {
    message.textContent = model.get("message") || "";
    errorLine.textContent = model.get("error") || "";
  }

  function drawZoom() {
    const z = model.get("zoomed") || {};
    zoomLayer.replaceChildren();
    if (!z.sample) {
      zoomLayer.style.display = "none";
      return;
    }
    zoomLayer.appendChild(renderSample(z.sample, true));
    zoomLayer.style.display = "";
  }

  function closeZoom() {
    model.set("zoomed", {});
    model.save_changes();
  }

  const HELP = [
    ["class keys", "label (shown on each class button: 1\u20139 and 0, or the class name when it is one character)"],
    ["Enter / Space", "accept the model's suggestion (multi-label: save the toggled classes)"],
    ["Shift+Enter", "accept every suggestion on the page (or batch) at once; Backspace undoes them"],
    ["\u2190 \u2191 \u2192 \u2193", "move between samples"],
    ["Backspace", "undo the last action"],
    ["S", "skip"],
    ["F", "flag for review"],
    ["V", "grid / one at a time"],
    ["Z", "larger view"],
    ["N", "next batch (in a review: next page; after the last one, back to the batch)"],
    ["P", "previous page of a review"],
    ["PageDown / PageUp", "next / previous page of a review"],
    ["B", "end the review: back to the query batch"],
    ["/", "type a class name (more than 10 classes)"],
    ["?", "this help"],
    ["Esc", "leave the widget (keys go back to the notebook)"],
  ];
  help.appendChild(h("div", "dal-card-title", "Keyboard"));
  const helpTable = h("table");
  for (const [k, v] of HELP) {
    const tr = h("tr");
    tr.appendChild(h("th", null, k));
    tr.appendChild(h("td", null, v));
    helpTable.appendChild(tr);
  }
  help.appendChild(helpTable);
  help.addEventListener("click", () => toggleHelp());

  function toggleHelp() {
    help.style.display = help.style.display === "none" ? "" : "none";
  }

  function drawHint() {
    hint.textContent = el.contains(document.activeElement)
      ? "Keys active \u00b7 ? for help \u00b7 Esc to leave"
      : "Click here to label with the keyboard";
    el.classList.toggle("dal-focused", el.contains(document.activeElement));
  }

  // ---- keyboard: only while focus is inside the widget; JupyterLab's shortcuts stay off then
  el.addEventListener("keydown", (e) => {
    if (e.target === addBox) {
      e.stopPropagation();
      if (e.key === "Enter" && addBox.value.trim()) {
        act({ action: "add_class", name: addBox.value.trim() });
        addBox.value = "";
        addBox.style.display = "none";
        el.focus();
      } else if (e.key === "Escape") {
        addBox.style.display = "none";
        el.focus();
      }
      return;
    }
    if (e.target === typeahead) {
      e.stopPropagation();
      const found = matching();
      if (e.key === "Enter") {
        e.preventDefault();
        if (found.length) pickMatch(found[matchIndex] || found[0]);
      } else if (e.key === "ArrowDown" || e.key === "Tab") {
        e.preventDefault();
        matchIndex = found.length ? (matchIndex + 1) % found.length : 0;
        drawMatches();
      } else if (e.key === "ArrowUp") {
        e.preventDefault();
        matchIndex = found.length ? (matchIndex - 1 + found.length) % found.length : 0;
        drawMatches();
      } else if (e.key === "Escape") {
        typeahead.value = "";
        drawMatches();
        el.focus();
      }
      return;
    }
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const k = e.key;
    let handled = true;
    const cls = classes();
    const classKey = keysFor(cls).indexOf(k.length === 1 ? k.toLowerCase() : k);
    if (classKey >= 0) {
      labelWith(cls[classKey]);
    } else if (k === "Enter" && e.shiftKey) {
      acceptPage();
    } else if (k === "Enter" || k === " ") {
      commit();
    } else if (k === "ArrowRight") {
      inflight ? queue.push({ action: "local-move", delta: 1 }) : moveCursor(1);
    } else if (k === "ArrowLeft") {
      inflight ? queue.push({ action: "local-move", delta: -1 }) : moveCursor(-1);
    } else if (k === "ArrowDown") {
      const c = columns();
      inflight ? queue.push({ action: "local-move", delta: c }) : moveCursor(c);
    } else if (k === "ArrowUp") {
      const c = columns();
      inflight ? queue.push({ action: "local-move", delta: -c }) : moveCursor(-c);
    } else if (k === "Backspace") {
      act({ action: "undo" });
    } else if (k === "s" || k === "S") {
      act({ action: "skip" });
    } else if (k === "f" || k === "F") {
      act({ action: "flag" });
    } else if (k === "v" || k === "V") {
      act({ action: "view" });
    } else if (k === "z" || k === "Z") {
      if ((model.get("zoomed") || {}).sample) closeZoom();
      else act({ action: "zoom" });
    } else if (k === "n" || k === "N" || (k === "PageDown" && reviewing())) {
      act({ action: "next" }); // Python turns the review's page, or shows the next batch
    } else if ((k === "p" || k === "P" || k === "PageUp") && reviewing()) {
      act({ action: "page", delta: -1 });
    } else if ((k === "b" || k === "B") && reviewing()) {
      act({ action: "end_review" });
    } else if (k === "?") {
      toggleHelp();
    } else if (k === "/") {
      if (classes().length > keysFor(classes()).length) typeahead.focus();
    } else if (k === "Escape") {
      if (help.style.display !== "none") toggleHelp();
      else if ((model.get("zoomed") || {}).sample) closeZoom();
      else el.blur();
    } else {
      handled = false;
    }
    // Keys inside the widget never reach JupyterLab (no cell changes type on "m", "y", ...).
    e.stopPropagation();
    if (handled) e.preventDefault();
  });
  typeahead.addEventListener("input", () => { matchIndex = 0; drawMatches(); });
  el.addEventListener("focusin", drawHint);
  el.addEventListener("focusout", () => setTimeout(drawHint, 0));
  el.addEventListener("mousedown", (e) => {
    if (e.target === typeahead || e.target === addBox) return;
    // Focus the widget itself on any click inside it, so keys work at once.
    setTimeout(() => { if (!el.contains(document.activeElement) || document.activeElement === document.body) el.focus(); }, 0);
  });

  // Redrawing removes elements; if the focus was inside the widget and went with them (a
  // button hidden, a page replaced), it comes back to the widget, so the keys keep working.
  const keepingFocus = (draw) => () => {
    const had = el.contains(document.activeElement);
    draw();
    if (had && !el.contains(document.activeElement)) el.focus({ preventScroll: true });
  };
  const onItems = keepingFocus(() => { drawTiles(); drawZoom(); });
  const onStates = keepingFocus(drawTiles);
  const onReview = keepingFocus(drawReview);
  const onClasses = () => { drawClasses(); drawTiles(); };
  const onCursorSelection = () => {
    if (selection.size && selectionKey !== cursorKey()) {
      selection.clear();
      drawClasses();
    }
  };
  model.on("change:items", onItems);
  model.on("change:states", onStates);
  model.on("change:review_info", onReview);
  model.on("change:cursor", drawTiles);
  model.on("change:view", drawTiles);
  model.on("change:loading", drawTiles);
  model.on("change:classes", onClasses);
  model.on("change:cursor", onCursorSelection);
  model.on("change:progress", drawProgress);
  model.on("change:message", drawMessages);
  model.on("change:error", drawMessages);
  model.on("change:zoomed", drawZoom);

  drawProgress();
  drawClasses();
  drawTiles();
  drawMessages();
  drawReview();
  drawHint();

  return () => {
    model.off("change:items", onItems);
    model.off("change:states", onStates);
    model.off("change:review_info", onReview);
    model.off("change:classes", onClasses);
    model.off("change:cursor", onCursorSelection);
    model.off("change:cursor", drawTiles);
    model.off("change:view", drawTiles);
    model.off("change:loading", drawTiles);
    model.off("change:progress", drawProgress);
    model.off("change:message", drawMessages);
    model.off("change:error", drawMessages);
    model.off("change:zoomed", drawZoom);
  };
}

export default { render };
