// Stead's service worker shim. The build puts this after wasm-bindgen's glue for both of
// the worker's modules and the serving module's wasm (base64) in one script, stead-sw.js:
// the browser stores a worker's scripts with the worker itself, so it can start again
// with no network.
//
// The serving wasm is compiled synchronously on first evaluation (allowed in workers), so
// every listener is registered at once and can decide synchronously whether to respond.
// The data engine (`stead_data`) is a bundle file the serving module compiles on first
// data use; it calls `__stead_data_init` with the compiled module.
(() => {
  // The start's first steps, for status's `start_profile` (ms since the time origin).
  const start = { script_evaluated: performance.now() };
  self.__stead_start = start;
  // The OPFS root, asked for before the wasm is decoded and compiled: its first call in a
  // worker life is the slowest file-system step of a cold start, and it needs no wasm.
  // Rust's `opfs::root` takes this promise; a rejection (no OPFS) is seen there.
  try {
    const storage = self.navigator && navigator.storage;
    if (storage && typeof storage.getDirectory === "function") {
      const root = storage.getDirectory();
      root.catch(() => {});
      self.__stead_opfs_root = root;
    }
  } catch (e) {}
  const b64 = self.__STEAD_SW_WASM;
  delete self.__STEAD_SW_WASM;
  const bytes = typeof Uint8Array.fromBase64 === "function"
    ? Uint8Array.fromBase64(b64)
    : Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  if (typeof stead_data !== "undefined") {
    self.__stead_data_init = (module) => {
      stead_data.initSync({ module });
      stead_data.start();
      return stead_data;
    };
  }
  start.wasm_decoded = performance.now();
  wasm_bindgen.initSync({ module: bytes });
  start.wasm_instantiated = performance.now();
  wasm_bindgen.on_start();
  // Stored files the worker served, kept in memory (`fetch::hot`): the browser answers a
  // Blob over a pack file by reading that file each time, one made from bytes in hand
  // without it. A file's first answer comes from the store and reads it in for the next;
  // files up to 2 MiB, 16 MiB in all per worker life.
  const hot = new WeakMap();
  let hotBytes = 0;
  self.__stead_hot = (blob) => {
    const held = hot.get(blob);
    if (held !== undefined) return held || blob;
    if (blob.size <= 2 << 20 && hotBytes + blob.size <= 16 << 20) {
      hotBytes += blob.size;
      hot.set(blob, null);
      blob.arrayBuffer().then(
        (bytes) => hot.set(blob, new Blob([bytes])),
        () => hot.delete(blob),
      );
    }
    return blob;
  };
  // Cold routes (Chromium's static routing): while the worker is not running, the browser
  // answers the app's own GETs from the Cache Storage copy the worker keeps of its versions
  // (`cold.rs`), without starting the worker. A miss there goes to the network, so only
  // requests the copy surely holds match: the scope's entry as a navigation (other
  // navigations are the app's routes, which the worker answers) and files without a query.
  // The page API always reaches the worker.
  const scope = self.registration.scope;
  // Named under the scope as the worker's other storage is (`scope::key_for`).
  const key = new URL(scope).pathname.replace(/^\/+|\/+$/g, "").replace(/[/%\\]/g, (c) => "%" + c.charCodeAt(0).toString(16).toUpperCase());
  const cold = key ? "stead-cold@" + key : "stead-cold";
  const routes = typeof InstallEvent === "function" && typeof InstallEvent.prototype.addRoutes === "function";
  // What the copy holds (never routed), and the wake page kept for tests to inspect.
  const MARKER = "_stead/cold";
  const WAKE = "_stead/wake";
  const url = (path) => new URL(path, scope).href;
  // Stands in for the entry while the copy is written: the install puts it, a rewrite that
  // changes the entry puts it first and the entry last. A page loaded from it starts the
  // worker with a page-API request (never taken from the copy) and loads again, then from
  // the running worker. Three tries a minute at most, so a worker that cannot start does
  // not reload forever.
  const wakePage = () =>
    new Response(
      '<!doctype html><meta charset="utf-8"><title>Starting</title><body><script>' +
        // The tries are kept in sessionStorage and in the history entry's state (which a
        // reload keeps), the longer list counting: storage that throws or holds something
        // else neither stops the wake nor lets it reload forever.
        'const k = "stead-wake", now = Date.now();' +
        "const read = (f) => { try { const v = f(); return Array.isArray(v) ? v : []; } catch (e) { return []; } };" +
        'const a = read(() => JSON.parse(sessionStorage.getItem(k) || "[]")), b = read(() => history.state[k]);' +
        'const tries = (a.length >= b.length ? a : b).filter((t) => typeof t === "number" && now - t < 60000);' +
        "if (tries.length < 3) {" +
        "  const next = [...tries, now];" +
        "  try { sessionStorage.setItem(k, JSON.stringify(next)); } catch (e) {}" +
        "  try { history.replaceState({ ...(history.state || {}), [k]: next }, \"\"); } catch (e) {}" +
        '  fetch("_stead/v1/status", { cache: "no-store" }).catch(() => {}).finally(() => location.reload());' +
        '} else document.body.textContent = "This app could not start. Reload to try again.";' +
        "</script>",
      { headers: { "content-type": "text/html; charset=utf-8", "cache-control": "no-cache", "content-security-policy": "frame-ancestors 'self'" } },
    );
  // When the running rewrite started: one at a time (a page's `hello` during the one after
  // activation finds nothing to do); one whose caller failed between `missing` and `sync`
  // stops counting after a minute.
  let syncing = -Infinity;
  if (routes) self.__stead_cold = {
    // At install, before the version serves: the wake page stands in for the entry until
    // this worker, once active, writes the copy, and the marker forgets the entry so that
    // write puts it back.
    async prepare() {
      const cache = await caches.open(cold);
      await Promise.all([cache.put(url(""), wakePage()), cache.put(url(WAKE), wakePage())]);
      const marker = await cache.match(url(MARKER));
      if (marker) {
        const held = (await marker.text()).split("\n").filter((line) => !line.endsWith(" "));
        await cache.put(url(MARKER), new Response(held.join("\n")));
      }
    },
    // Which of `lines` (one `sha256 version path` per entry the copy must hold; the entry's
    // path is "") the copy lacks, by index, or null when it holds exactly those or another
    // rewrite is running; the marker lists what it holds.
    async missing(lines) {
      if (performance.now() - syncing < 60000) return null;
      const marker = await (await caches.open(cold)).match(url(MARKER));
      const text = marker ? await marker.text() : null;
      if (text === lines.join("\n")) return null;
      syncing = performance.now();
      const held = new Set(text === null ? [] : text.split("\n"));
      return lines.flatMap((line, i) => (held.has(line) ? [] : [i]));
    },
    // Puts `put` ([path, Response] pairs; a new entry last, behind the wake page), then
    // deletes every entry but `paths`, then writes the marker. A stop in between leaves
    // extra entries, or files the wake page's reload gets from the worker; the next sync
    // finishes the job.
    async sync(put, paths, lines) {
      try {
        const cache = await caches.open(cold);
        const entry = put.find(([path]) => path === "");
        const files = put.filter(([path]) => path !== "");
        if (entry && files.length) await cache.put(url(""), wakePage());
        await Promise.all(files.map(([path, response]) => cache.put(url(path), response)));
        const wanted = new Set([...paths, WAKE].map(url));
        const stale = (await cache.keys()).filter((r) => !wanted.has(r.url));
        await Promise.all(stale.map((r) => cache.delete(r)));
        if (entry) await cache.put(url(""), entry[1]);
        await cache.put(url(MARKER), new Response(lines.join("\n")));
        start.cold_synced = performance.now();
      } finally {
        syncing = -Infinity;
      }
    },
    drop: () => caches.delete(cold),
  };
  self.addEventListener("install", (e) => {
    if (routes) {
      const base = new URL(scope).pathname;
      const get = { runningStatus: "not-running", requestMethod: "GET" };
      const file = { pathname: base + "*", search: "" };
      e.addRoutes([
        { condition: { urlPattern: { pathname: base + "_stead/*" } }, source: "fetch-event" },
        {
          condition: {
            or: [
              { ...get, requestMode: "navigate", urlPattern: { pathname: base, search: "" } },
              ...["same-origin", "no-cors", "cors"].map((requestMode) => ({ ...get, requestMode, urlPattern: file })),
            ],
          },
          source: { cacheName: cold },
        },
      ]).catch((err) => console.warn("stead: no cold routes:", err));
      e.waitUntil(self.__stead_cold.prepare());
    }
    wasm_bindgen.on_install(e);
  });
  self.addEventListener("activate", (e) => {
    wasm_bindgen.on_activate(e);
    // The copy is written once this version serves, not during the install (which it
    // would hold up): this worker says `hello` to itself, as a page's start does.
    if (routes) (self.serviceWorker || self.registration.active)?.postMessage({ type: "hello" });
  });
  self.addEventListener("fetch", (e) => wasm_bindgen.on_fetch(e));
  self.addEventListener("message", (e) => wasm_bindgen.on_message(e));
  self.addEventListener("sync", (e) => wasm_bindgen.on_sync(e));
})();
