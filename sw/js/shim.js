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
  self.addEventListener("install", (e) => wasm_bindgen.on_install(e));
  self.addEventListener("activate", (e) => wasm_bindgen.on_activate(e));
  self.addEventListener("fetch", (e) => wasm_bindgen.on_fetch(e));
  self.addEventListener("message", (e) => wasm_bindgen.on_message(e));
  self.addEventListener("sync", (e) => wasm_bindgen.on_sync(e));
})();
