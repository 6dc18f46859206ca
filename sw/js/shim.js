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
  const MARKER = "_stead/cold";
  const url = (path) => new URL(path, scope).href;
  // Puts made during a first install (`early`), and the lines of those that succeeded.
  const puts = [];
  const putEarly = new Set();
  if (routes) self.__stead_cold = {
    early(line, path, response) {
      puts.push(caches.open(cold).then((c) => c.put(url(path), response)).then(() => putEarly.add(line), () => {}));
    },
    // Which of `lines` (one `sha256 version path` per entry the copy must hold) the copy
    // lacks, by index, or null when it holds exactly those; the marker lists what it holds,
    // besides what this worker life put early.
    async missing(lines) {
      await Promise.all(puts.splice(0));
      const marker = await (await caches.open(cold)).match(url(MARKER));
      const text = marker ? await marker.text() : null;
      if (text === lines.join("\n")) return null;
      const held = new Set(text === null ? putEarly : [...putEarly, ...text.split("\n")]);
      return lines.flatMap((line, i) => (held.has(line) ? [] : [i]));
    },
    // Puts `put` ([path, Response] pairs) first, then deletes every entry but `paths`,
    // then writes the marker: a stop in between leaves extra entries, never a hole, and
    // the next sync finishes the job.
    async sync(put, paths, lines) {
      const cache = await caches.open(cold);
      await Promise.all(put.map(([path, response]) => cache.put(url(path), response)));
      const wanted = new Set(paths.map(url));
      const stale = (await cache.keys()).filter((r) => !wanted.has(r.url));
      await Promise.all(stale.map((r) => cache.delete(r)));
      await cache.put(url(MARKER), new Response(lines.join("\n")));
      putEarly.clear();
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
    }
    wasm_bindgen.on_install(e);
  });
  self.addEventListener("activate", (e) => wasm_bindgen.on_activate(e));
  self.addEventListener("fetch", (e) => wasm_bindgen.on_fetch(e));
  self.addEventListener("message", (e) => wasm_bindgen.on_message(e));
  self.addEventListener("sync", (e) => wasm_bindgen.on_sync(e));
})();
