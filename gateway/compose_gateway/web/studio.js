// Compose studio: the web client of the gateway's API (POST generate, GET jobs/{id}/events,
// GET jobs, DELETE jobs/{id}). Plain JavaScript, no dependencies, no build step. Every URL is
// relative, so the page works under the gateway's root path. The API key stays in this page's
// memory (or this tab's sessionStorage when asked) and goes only to these relative URLs.
"use strict";

(() => {
  const KEY_STORAGE = "compose-studio-key";
  const SILENCE_MS = 10000;
  // The stages shown, one per phase in order (a failure takes the last one's place).
  const PHASES = [
    { phase: "Pending", label: "Submitted" },
    { phase: "Queued", label: "Queued" },
    { phase: "Starting", label: "Starting" },
    { phase: "Running", label: "Running" },
    { phase: "Succeeded", label: "Done" },
  ];
  const ORDER = PHASES.map((p) => p.phase);
  const MARK_WORDS = { done: "done", current: "in progress", upcoming: "to come" };
  const FIELD_LABELS = {
    personImage: "Person photo",
    placeImage: "Place photo",
    clothingImages: "Garments",
    clothingCategories: "Garment categories",
    body: "Request",
  };

  // Errors whose sentence says all the gateway's message would.
  const SAID_ENOUGH = new Set(["Unauthorized", "NotFound", "RateLimited", "TooManyFailedAttempts"]);

  const $ = (id) => document.getElementById(id);
  const state = {
    key: "",
    config: null,
    person: null,
    place: null,
    garments: [], // {file, category, url}
    previews: new Map(), // slot -> object URL
    job: null, // id of the job on show
    follow: null, // AbortController of the stream being read
    submitted: new Map(), // job id -> [{label, url}] of the inputs sent from this page
    historyToken: null,
    lastAnnounced: "",
  };

  function element(tag, attributes = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes)) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "text") node.textContent = value;
      else if (name in node && typeof value !== "string") node[name] = value;
      else node.setAttribute(name, value === true ? "" : value);
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  // --- the API ----------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.message) || `HTTP ${status}`);
      this.status = status;
      this.body = body || {};
    }
  }

  async function api(path, options = {}) {
    if (!state.key) throw new ApiError(401, { reason: "Unauthorized", message: "no API key" });
    const headers = { Authorization: `Bearer ${state.key}`, ...(options.headers || {}) };
    const response = await fetch(path, { ...options, headers, credentials: "omit" });
    if (!response.ok) {
      let body = null;
      try {
        body = await response.json();
      } catch (_) {
        body = null;
      }
      throw new ApiError(response.status, body);
    }
    return response;
  }

  function explain(error) {
    if (!(error instanceof ApiError)) {
      return "The gateway could not be reached. Check the connection and try again.";
    }
    const words = state.config ? state.config.requestErrors[error.body.reason] : null;
    if (!words) return error.message;
    // Invalid input lists its fields apart; others add what the gateway said, where it says more.
    const enough = error.body.errors || SAID_ENOUGH.has(error.body.reason);
    return enough ? words : `${words} (${error.message})`;
  }

  // --- key --------------------------------------------------------------------------------

  function setKeyStatus(text, ok) {
    const status = $("key-status");
    status.textContent = text;
    status.classList.toggle("ok", ok === true);
    status.classList.toggle("bad", ok === false);
  }

  async function useKey(key, { quiet = false } = {}) {
    state.key = key.trim();
    if (!state.key) {
      setKeyStatus("Enter an API key.", false);
      $("api-key").focus();
      return false;
    }
    sessionStorage.removeItem(KEY_STORAGE);
    try {
      await loadHistory({ reset: true });
    } catch (error) {
      setKeyStatus(explain(error), false);
      if (error instanceof ApiError && error.status === 401) {
        state.key = "";
        if (!quiet) $("api-key").focus();
      }
      return false;
    }
    if ($("remember-key").checked) sessionStorage.setItem(KEY_STORAGE, state.key);
    setKeyStatus("Key accepted.", true);
    return true;
  }

  function forgetKey() {
    state.key = "";
    sessionStorage.removeItem(KEY_STORAGE);
    $("api-key").value = "";
    $("remember-key").checked = false;
    $("history").replaceChildren();
    $("more-history").hidden = true;
    $("history-status").textContent = "";
    setKeyStatus("The key is forgotten.", null);
    $("api-key").focus();
  }

  // --- photos -----------------------------------------------------------------------------

  function preview(slot, file, image) {
    const old = state.previews.get(slot);
    if (old) URL.revokeObjectURL(old);
    state.previews.delete(slot);
    if (!file) {
      image.hidden = true;
      image.removeAttribute("src");
      return null;
    }
    const url = URL.createObjectURL(file);
    state.previews.set(slot, url);
    image.src = url;
    image.alt = `Preview of ${file.name}`;
    image.hidden = false;
    return url;
  }

  function isImage(file) {
    return ["image/jpeg", "image/png", "image/webp"].includes(file.type) || /\.(jpe?g|png|webp)$/i.test(file.name);
  }

  function putFile(input, file) {
    // A dropped file goes into its input too, so the control shows what it holds.
    try {
      const transfer = new DataTransfer();
      transfer.items.add(file);
      input.files = transfer.files;
    } catch (_) {
      /* an older browser: the state still holds the file */
    }
  }

  function setSingle(which, file) {
    state[which] = file;
    preview(which, file, $(`${which}-preview`));
  }

  function renderGarments() {
    const list = $("garment-list");
    const max = state.config ? state.config.maxClothing : 8;
    list.replaceChildren(
      ...state.garments.map((garment, index) => garmentRow(garment, index))
    );
    $("add-garment").disabled = state.garments.length >= max;
  }

  function garmentRow(garment, index) {
    const number = index + 1;
    const fileId = `garment-${number}`;
    const categoryId = `garment-${number}-category`;
    const image = element("img", { class: "preview", alt: "", hidden: true });
    if (garment.url) {
      image.src = garment.url;
      image.alt = `Preview of ${garment.file.name}`;
      image.hidden = false;
    }
    const file = element("input", {
      id: fileId,
      type: "file",
      accept: "image/jpeg,image/png,image/webp",
    });
    file.dataset.field = `clothingImages[${index}]`;
    file.addEventListener("change", () => {
      const chosen = file.files[0] || null;
      setGarmentFile(index, chosen);
    });
    const select = element("select", { id: categoryId });
    select.dataset.field = `clothingCategories[${index}]`;
    select.append(element("option", { value: "", text: "Not specified" }));
    for (const category of (state.config ? state.config.categories : [])) {
      select.append(element("option", { value: category.value, text: category.label }));
    }
    select.value = garment.category || "";
    select.addEventListener("change", () => {
      state.garments[index].category = select.value;
    });
    const remove = element("button", {
      type: "button",
      class: "quiet",
      text: "Remove",
      "aria-label": `Remove garment ${number}`,
    });
    remove.addEventListener("click", () => {
      if (garment.url) URL.revokeObjectURL(garment.url);
      state.garments.splice(index, 1);
      if (state.garments.length === 0) state.garments.push({ file: null, category: "", url: null });
      renderGarments();
      const next = $(`garment-${Math.min(number, state.garments.length)}`);
      if (next) next.focus();
    });
    const row = element(
      "li",
      { class: "garment drop" },
      image,
      element(
        "div",
        { class: "garment-fields" },
        element(
          "div",
          { class: "garment-field" },
          element("label", { for: fileId, text: `Garment ${number} photo` }),
          file,
        ),
        element(
          "div",
          { class: "garment-field" },
          element("label", { for: categoryId, text: `Garment ${number} is worn as` }),
          select,
        ),
      ),
      remove,
    );
    if (garment.file) putFile(file, garment.file);
    return row;
  }

  function setGarmentFile(index, file) {
    const garment = state.garments[index];
    if (garment.url) URL.revokeObjectURL(garment.url);
    garment.file = file;
    garment.url = file ? URL.createObjectURL(file) : null;
    renderGarments();
    $(`garment-${index + 1}`).focus(); // the row was drawn again: keep the user's place
  }

  function addGarments(files) {
    const max = state.config ? state.config.maxClothing : 8;
    for (const file of files) {
      let slot = state.garments.findIndex((g) => !g.file);
      if (slot < 0) {
        if (state.garments.length >= max) break;
        state.garments.push({ file: null, category: "", url: null });
        slot = state.garments.length - 1;
      }
      state.garments[slot].file = file;
      state.garments[slot].url = URL.createObjectURL(file);
    }
    renderGarments();
  }

  function setUpDrops() {
    for (const zone of document.querySelectorAll("[data-drop]")) {
      zone.addEventListener("dragover", (event) => {
        event.preventDefault();
        zone.classList.add("dragging");
      });
      zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
      zone.addEventListener("drop", (event) => {
        event.preventDefault();
        zone.classList.remove("dragging");
        const files = [...event.dataTransfer.files].filter(isImage);
        if (!files.length) return;
        const which = zone.dataset.drop;
        if (which === "garments") {
          addGarments(files);
        } else {
          putFile($(which), files[0]);
          setSingle(which, files[0]);
        }
      });
    }
    for (const which of ["person", "place"]) {
      $(which).addEventListener("change", () => setSingle(which, $(which).files[0] || null));
    }
    $("add-garment").addEventListener("click", () => {
      state.garments.push({ file: null, category: "", url: null });
      renderGarments();
      $(`garment-${state.garments.length}`).focus();
    });
  }

  // --- parameters -------------------------------------------------------------------------

  function setUpParams() {
    for (const [name, bound] of Object.entries(state.config.params)) {
      const input = $(`param-${name}`);
      if (!input) continue;
      input.dataset.field = name;
      if (bound.minimum !== undefined) input.min = bound.minimum;
      if (bound.maximum !== undefined) input.max = bound.maximum;
      if (bound.multipleOf !== undefined) input.step = bound.multipleOf;
      else if (input.type === "range") input.step = "0.05";
      if (bound.maxLength !== undefined) input.maxLength = bound.maxLength;
      if (input.tagName === "TEXTAREA") input.placeholder = bound.default || "";
      else if (bound.default === null || bound.default === undefined) input.placeholder = "random";
      $(`help-${name}`).textContent = bound.help || "";
      const output = $(`out-${name}`);
      if (output) input.addEventListener("input", () => (output.textContent = Number(input.value).toFixed(2)));
    }
    resetParams();
    $("reset-params").addEventListener("click", resetParams);
  }

  function resetParams() {
    for (const [name, bound] of Object.entries(state.config.params)) {
      const input = $(`param-${name}`);
      if (!input) continue;
      input.value = input.tagName === "TEXTAREA" || bound.default === null ? "" : bound.default;
      const output = $(`out-${name}`);
      if (output) output.textContent = Number(input.value).toFixed(2);
    }
  }

  // --- submitting -------------------------------------------------------------------------

  function controlFor(field) {
    if (field === "personImage") return $("person");
    if (field === "placeImage") return $("place");
    const item = /^clothing(Images|Categories)\[(\d+)\]/.exec(field);
    if (item) {
      const number = Number(item[2]) + 1;
      return $(item[1] === "Images" ? `garment-${number}` : `garment-${number}-category`);
    }
    if (field.startsWith("clothing")) return $("garment-1");
    return document.querySelector(`[data-field="${CSS.escape(field)}"]`);
  }

  function labelOf(field) {
    const item = /^clothing(Images|Categories)\[(\d+)\]/.exec(field);
    if (item) return `Garment ${Number(item[2]) + 1}${item[1] === "Categories" ? " category" : ""}`;
    if (FIELD_LABELS[field]) return FIELD_LABELS[field];
    const control = controlFor(field);
    const label = control && control.id ? document.querySelector(`label[for="${control.id}"]`) : null;
    return label ? label.textContent.trim() : field;
  }

  function showFormErrors(lead, problems) {
    const box = $("form-errors");
    for (const control of document.querySelectorAll("[aria-invalid]")) control.removeAttribute("aria-invalid");
    if (!lead) {
      box.hidden = true;
      box.replaceChildren();
      return;
    }
    const list = element("ul");
    for (const problem of problems) {
      list.append(element("li", { text: `${labelOf(problem.field)}: ${problem.message}` }));
      const control = controlFor(problem.field);
      if (control) control.setAttribute("aria-invalid", "true");
    }
    box.replaceChildren(element("p", { text: lead }), ...(problems.length ? [list] : []));
    box.hidden = false;
    const first = problems.map((p) => controlFor(p.field)).find(Boolean);
    if (first) {
      const details = first.closest("details");
      if (details) details.open = true;
      first.focus();
    } else {
      box.focus();
    }
  }

  function checkForm() {
    const problems = [];
    if (!state.person) problems.push({ field: "personImage", message: "choose a photo" });
    const garments = state.garments.filter((g) => g.file);
    if (!garments.length) problems.push({ field: "clothingImages[0]", message: "choose at least one photo" });
    if (!state.place) problems.push({ field: "placeImage", message: "choose a photo" });
    const limit = state.config.maxUploadBytes;
    const sized = [["personImage", state.person], ["placeImage", state.place]];
    state.garments.forEach((g, i) => sized.push([`clothingImages[${i}]`, g.file]));
    for (const [field, file] of sized) {
      if (file && file.size > limit) {
        problems.push({ field, message: `larger than ${(limit / 1048576).toFixed(0)} MiB` });
      }
    }
    return problems;
  }

  function formData() {
    const form = new FormData();
    form.append("personImage", state.person, state.person.name);
    for (const garment of state.garments.filter((g) => g.file)) {
      form.append("clothingImages", garment.file, garment.file.name);
      form.append("clothingCategories", garment.category || "");
    }
    form.append("placeImage", state.place, state.place.name);
    // Only what differs from the API's defaults (a profile may have defaults of its own).
    for (const [name, bound] of Object.entries(state.config.params)) {
      const input = $(`param-${name}`);
      const value = input ? input.value.trim() : "";
      if (value === "" || (bound.default !== null && Number(value) === bound.default)) continue;
      form.append(name, value);
    }
    return form;
  }

  async function submit(event) {
    event.preventDefault();
    if (!state.key) {
      setKeyStatus("Enter your API key first.", false);
      $("api-key").focus();
      return;
    }
    // Rows left empty are dropped, so the API's clothingImages[i] is the i-th row shown.
    if (state.garments.some((g) => g.file)) {
      state.garments = state.garments.filter((g) => g.file);
      renderGarments();
    }
    const problems = checkForm();
    if (problems.length) {
      showFormErrors("Some photos are missing or too large:", problems);
      return;
    }
    showFormErrors(null);
    const button = $("submit");
    button.disabled = true;
    button.textContent = "Sending…";
    try {
      const response = await api("generate", { method: "POST", body: formData() });
      const accepted = await response.json();
      const inputs = [
        { label: "Person", url: URL.createObjectURL(state.person) },
        ...state.garments.filter((g) => g.file).map((g, i) => ({
          label: `Garment ${i + 1}${g.category ? `: ${categoryLabel(g.category)}` : ""}`,
          url: URL.createObjectURL(g.file),
        })),
        { label: "Place", url: URL.createObjectURL(state.place) },
      ];
      state.submitted.set(accepted.jobId, inputs);
      openJob({ jobId: accepted.jobId, status: accepted.status, phase: "Pending" }, { focus: true });
      loadHistory({ reset: true }).catch(() => {});
    } catch (error) {
      const problems = (error instanceof ApiError && error.body.errors) || [];
      showFormErrors(explain(error), problems);
      if (error instanceof ApiError && error.status === 401) $("api-key").focus();
    } finally {
      button.disabled = false;
      button.textContent = "Compose";
    }
  }

  function categoryLabel(value) {
    const found = state.config.categories.find((c) => c.value === value);
    return found ? found.label : value;
  }

  // --- following a job --------------------------------------------------------------------

  function stopFollowing() {
    if (state.follow) state.follow.abort();
    state.follow = null;
  }

  function openJob(view, { focus = false } = {}) {
    stopFollowing();
    state.job = view.jobId;
    state.lastAnnounced = "";
    $("job").hidden = false;
    $("job-id").textContent = view.jobId;
    renderJob(view);
    if (focus) $("job-heading").focus();
    if (view.status !== "success" && view.status !== "error") follow(view.jobId);
  }

  async function follow(jobId) {
    const controller = new AbortController();
    state.follow = controller;
    let delay = 2000;
    let failures = 0;
    while (!controller.signal.aborted && state.job === jobId) {
      let ended = false;
      try {
        const response = await api(`jobs/${encodeURIComponent(jobId)}/events`, {
          headers: { Accept: "text/event-stream" },
          signal: controller.signal,
        });
        failures = 0;
        const outcome = await readEvents(response, jobId, (retry) => (delay = retry));
        // Nothing came through at all (a proxy that holds the stream back): read the job instead.
        ended = outcome === "silent" ? await poll(jobId, controller.signal) : outcome === "ended";
      } catch (error) {
        if (controller.signal.aborted) return;
        failures += 1;
        if (error instanceof ApiError && [401, 404].includes(error.status)) {
          announce(explain(error));
          return;
        }
        if (failures >= 3) ended = await poll(jobId, controller.signal); // no stream here
      }
      if (ended) {
        loadHistory({ reset: true }).catch(() => {});
        return;
      }
      await sleep(delay, controller.signal);
    }
  }

  // Reads one event stream: "ended" (end or gone), "closed" (to reconnect), or "silent" when
  // not even the first event (sent at once) arrived within SILENCE_MS.
  async function readEvents(response, jobId, setRetry) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let heard = false;
    const silence = setTimeout(() => reader.cancel(), SILENCE_MS);
    for (;;) {
      const { value, done } = await reader.read();
      if (done) {
        clearTimeout(silence);
        return heard ? "closed" : "silent";
      }
      if (!heard) clearTimeout(silence);
      heard = true;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let name = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith(":")) continue;
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "event") name = text;
          else if (field === "data") data.push(text);
          else if (field === "retry" && /^\d+$/.test(text)) setRetry(Number(text));
        }
        if (!data.length || state.job !== jobId) continue;
        const payload = JSON.parse(data.join("\n"));
        if (name === "status") renderJob(payload);
        else if (name === "end") return "ended";
        else if (name === "gone") {
          renderGone(payload);
          return "ended";
        } else if (name === "error") {
          return "closed";
        }
      }
    }
  }

  async function poll(jobId, signal) {
    while (!signal.aborted && state.job === jobId) {
      try {
        const view = await (await api(`jobs/${encodeURIComponent(jobId)}`, { signal })).json();
        renderJob(view);
        if (view.status === "success" || view.status === "error") return true;
      } catch (error) {
        if (signal.aborted) return true;
        if (error instanceof ApiError && error.status === 404) {
          renderGone({ jobId, reason: "Cancelled", message: "the job was deleted" });
          return true;
        }
      }
      await sleep(2000, signal);
    }
    return true;
  }

  function sleep(milliseconds, signal) {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, milliseconds);
      signal.addEventListener("abort", () => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  function announce(text) {
    if (text === state.lastAnnounced) return;
    state.lastAnnounced = text;
    $("announce").textContent = text;
  }

  function reasonWords(reason) {
    return (reason && state.config.reasons[reason]) || "";
  }

  function failureWords(view) {
    return reasonWords(view.reason) || state.config.requestErrors[view.reason] || "The job failed.";
  }

  function describe(view) {
    const words = reasonWords(view.reason);
    switch (view.status) {
      case "success":
        return "Done: the image is ready.";
      case "error":
        return `Failed: ${failureWords(view)}`;
      case "queued":
        return `Queued${view.queuePosition ? ` (position ${view.queuePosition})` : ""}: ${words || "waiting for a machine."}`;
      case "suspended":
        return `Paused: ${words || "the job is suspended."}`;
      case "pending":
        return `Submitted: ${words || "waiting to be accepted."}`;
      default: {
        const stage = { starting: "Starting", running: "Running" }[view.status] || "Working";
        return `${stage}: ${words || "in progress."}`;
      }
    }
  }

  function when(text) {
    if (!text) return "";
    const date = new Date(text);
    return Number.isNaN(date.getTime()) ? text : date.toLocaleString();
  }

  function renderStages(view) {
    const conditions = new Map((view.conditions || []).map((c) => [c.type, c]));
    const failed = view.phase === "Failed";
    const suspended = view.phase === "Suspended";
    let reached; // the furthest stage the job got to
    if (failed) {
      const started = conditions.get("Started");
      reached = started ? (started.reason === "Running" ? 3 : 2) : conditions.has("Queued") ? 1 : 0;
    } else {
      reached = Math.max(0, ORDER.indexOf(suspended ? "Queued" : view.phase));
    }
    const items = PHASES.map((stage, index) => {
      const last = index === PHASES.length - 1;
      let mark = "upcoming";
      if (failed && last) mark = "failed";
      else if (index < reached || (index === reached && (failed || view.phase === "Succeeded"))) mark = "done";
      else if (index === reached) mark = "current";
      let label = stage.label;
      if (failed && last) label = "Failed";
      else if (suspended && index === reached) label = "Paused";
      return element(
        "li",
        { class: `stage ${mark}`, "aria-current": mark === "current" ? "step" : null },
        element("span", { class: "stage-name", text: label }),
        mark === "failed" ? null : element("span", { class: "visually-hidden", text: ` (${MARK_WORDS[mark]})` }),
      );
    });
    $("stages").replaceChildren(...items);
  }

  function renderJob(view) {
    if (view.jobId !== state.job) return;
    announce(describe(view));
    renderStages(view);
    const failed = view.status === "error";
    $("announce").classList.toggle("failed", failed);
    const detail = $("failure-detail");
    detail.textContent = view.message ? `Details: ${view.message} (${view.reason})` : `(${view.reason})`;
    detail.hidden = !failed || !view.reason;
    const inputs = state.submitted.get(view.jobId);
    $("inputs").hidden = !inputs;
    $("input-list").replaceChildren(
      ...(inputs || []).map((input) =>
        element(
          "li",
          {},
          element("img", { src: input.url, alt: input.label }),
          element("span", { text: input.label }),
        ),
      ),
    );
    const result = view.result;
    const image = $("result-image");
    const download = $("download");
    if (result) {
      if (image.dataset.sha !== result.sha256) {
        image.src = result.imageUrl;
        image.dataset.sha = result.sha256;
      }
      image.alt = `The composed image of job ${view.jobId}`;
      const format = (result.format || "png").toUpperCase();
      $("result-caption").textContent = `${result.width} × ${result.height} ${format}, seed ${result.seed}`;
      $("result").hidden = false;
      download.href = result.downloadUrl || result.imageUrl;
      download.setAttribute("download", `${view.jobId}.${result.format === "jpeg" ? "jpg" : result.format || "png"}`);
      download.hidden = false;
    } else {
      $("result").hidden = true;
      image.removeAttribute("src");
      delete image.dataset.sha;
      download.hidden = true;
    }
    const cancel = $("cancel");
    const ended = view.status === "success" || view.status === "error";
    cancel.hidden = false;
    cancel.textContent = ended ? "Delete the job" : "Cancel the job";
    renderConditions(view);
  }

  function renderConditions(view) {
    $("conditions").replaceChildren(
      ...(view.conditions || []).map((c) =>
        element(
          "tr",
          {},
          element("td", { text: `${c.type}${c.status === "True" ? "" : ` (${c.status})`}` }),
          element("td", { text: `${c.reason}${reasonWords(c.reason) ? ` — ${reasonWords(c.reason)}` : ""}` }),
          element("td", { text: c.message || "" }),
          element("td", {}, element("time", { datetime: c.lastTransitionTime, text: when(c.lastTransitionTime) })),
        ),
      ),
    );
    const timings = view.timings || {};
    const rows = Object.entries(timings).map(([name, seconds]) => [
      element("dt", { text: state.config.timings[name] || name }),
      element("dd", { text: Number(seconds).toFixed(1) }),
    ]);
    $("timings").replaceChildren(...rows.flat());
    if (!rows.length) $("timings").append(element("dt", { text: "Not reported yet" }), element("dd"));
  }

  function renderGone(payload) {
    stopFollowing();
    announce(`The job ${payload.jobId} was deleted.`);
    $("stages").replaceChildren();
    $("result").hidden = true;
    $("download").hidden = true;
    $("cancel").hidden = true;
    $("failure-detail").hidden = true;
    $("announce").classList.remove("failed");
  }

  async function cancelJob() {
    const jobId = state.job;
    if (!jobId) return;
    try {
      await api(`jobs/${encodeURIComponent(jobId)}`, { method: "DELETE" });
      renderGone({ jobId });
      loadHistory({ reset: true }).catch(() => {});
    } catch (error) {
      announce(explain(error));
    }
  }

  // --- history ----------------------------------------------------------------------------

  async function loadHistory({ reset }) {
    const status = $("history-status");
    const query = new URLSearchParams({ limit: "12" });
    if (!reset && state.historyToken) query.set("continue", state.historyToken);
    let page;
    try {
      page = await (await api(`jobs?${query}`)).json();
    } catch (error) {
      if (error instanceof ApiError && error.status === 410 && !reset) return loadHistory({ reset: true });
      status.textContent = explain(error);
      throw error;
    }
    state.historyToken = page.continue || null;
    const list = $("history");
    if (reset) list.replaceChildren();
    for (const view of page.items) list.append(historyItem(view));
    $("more-history").hidden = !state.historyToken;
    status.textContent = list.children.length
      ? `${list.children.length} job${list.children.length === 1 ? "" : "s"} shown.`
      : "No jobs yet.";
  }

  function historyItem(view) {
    const word = { success: "Done", error: "Failed", queued: "Queued", pending: "Submitted", starting: "Starting", running: "Running", suspended: "Paused" }[view.status] || view.status;
    const picture = view.result
      ? element("img", { src: view.result.imageUrl, alt: "", loading: "lazy", decoding: "async" })
      : element("span", { class: `placeholder ${view.status}`, "aria-hidden": "true", text: word });
    const created = view.createdAt ? when(view.createdAt) : "";
    const button = element(
      "button",
      { type: "button", class: "thumb", "aria-label": `${word} job ${view.jobId}${created ? `, created ${created}` : ""}` },
      picture,
      element("span", { class: `badge ${view.status}`, text: word }),
      element("span", { class: "when", text: created }),
    );
    if (view.status === "error") button.title = failureWords(view);
    button.addEventListener("click", () => openJob(view, { focus: true }));
    return element("li", {}, button);
  }

  // --- start ------------------------------------------------------------------------------

  async function start() {
    try {
      const response = await fetch("studio/config.json", { credentials: "omit" });
      state.config = await response.json();
    } catch (_) {
      $("key-status").textContent = "The page could not load its settings. Reload the page.";
      return;
    }
    setUpParams();
    state.garments = [{ file: null, category: "", url: null }];
    renderGarments();
    setUpDrops();
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      useKey($("api-key").value);
    });
    $("forget-key").addEventListener("click", forgetKey);
    $("compose").addEventListener("submit", submit);
    $("cancel").addEventListener("click", cancelJob);
    $("refresh-history").addEventListener("click", () => loadHistory({ reset: true }).catch(() => {}));
    $("more-history").addEventListener("click", () => loadHistory({ reset: false }).catch(() => {}));
    const kept = sessionStorage.getItem(KEY_STORAGE);
    if (kept) {
      $("api-key").value = kept;
      $("remember-key").checked = true;
      useKey(kept, { quiet: true });
    }
    document.body.dataset.ready = "true";
  }

  start();
})();
