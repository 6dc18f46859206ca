// The catalog's progressive part. The page is complete without it (every app has plain
// Open and Install links); with it, the catalog remembers which apps this browser opened
// or installed from here and says which has an update waiting, installs through the
// Web Install API where the browser has one, and keeps itself offline through Stead's
// service worker.
"use strict";
(() => {
  const KEY = "stead-catalog-apps";
  const load = () => {
    try {
      const v = JSON.parse(localStorage.getItem(KEY) || "{}");
      return v && typeof v === "object" ? v : {};
    } catch (_) {
      return {};
    }
  };
  const save = (apps) => {
    try {
      localStorage.setItem(KEY, JSON.stringify(apps));
    } catch (_) {
      // Storage refused (private mode, full): the list just is not remembered.
    }
  };
  const listed = new Map([...document.querySelectorAll("li.app")].map((li) => [li.dataset.app, li]));

  // `how`: "open", or "installed" once the browser said so.
  function remember(li, how) {
    const apps = load();
    const before = apps[li.dataset.app] || {};
    apps[li.dataset.app] = {
      title: li.dataset.title,
      url: li.dataset.url,
      version: li.dataset.version,
      installed: before.installed || how === "installed",
    };
    save(apps);
    showMine();
  }

  // "Yours": what this browser opened or installed from here. An app updates itself when
  // it is opened, so an update waits while the catalog lists a version newer than the
  // one this browser last opened.
  function showMine() {
    const section = document.getElementById("mine");
    const list = document.getElementById("mine-list");
    if (!section || !list) return;
    const apps = load();
    list.replaceChildren();
    for (const name of Object.keys(apps).sort()) {
      const seen = apps[name];
      if (!seen || typeof seen.url !== "string") continue;
      const li = document.createElement("li");
      li.dataset.app = name;
      const link = document.createElement("a");
      link.href = seen.url;
      link.textContent = seen.title || name;
      link.addEventListener("click", () => {
        const now = listed.get(name);
        if (now) remember(now, "open");
      });
      const state = document.createElement("span");
      state.className = "state";
      const now = listed.get(name);
      if (!now) {
        state.textContent = "no longer listed here";
      } else if (now.dataset.version !== seen.version) {
        li.dataset.update = "waiting";
        state.textContent = "update waiting: open it to update";
      } else {
        state.textContent = "up to date";
      }
      li.append(link, " ", seen.installed ? "(installed) " : "", "— ", state);
      list.append(li);
    }
    section.hidden = list.children.length === 0;
  }

  for (const li of listed.values()) {
    const open = li.querySelector("a.open");
    if (open) open.addEventListener("click", () => remember(li, "open"));
    const install = li.querySelector("a.install");
    if (!install) continue;
    install.addEventListener("click", async (e) => {
      // Remembered as opened: whether it gets installed is the app's prompt's to say.
      remember(li, "open");
      if (typeof navigator.install !== "function") return;
      // The Web Install API installs the app from here; where the browser refuses, the
      // link opens the app, which offers its own install prompt.
      e.preventDefault();
      try {
        await navigator.install(li.dataset.url);
        remember(li, "installed");
        install.textContent = "Installed";
        install.setAttribute("aria-disabled", "true");
        li.dataset.installed = "yes";
      } catch (err) {
        // Refused or dismissed: the app's own page offers its install prompt.
        console.info("catalog: navigator.install did not install", li.dataset.app, err);
        location.href = install.href;
      }
    });
  }
  showMine();

  // Offline: the catalog is a Stead bundle when the server has a worker for it.
  if (document.documentElement.dataset.worker === "stead" && "serviceWorker" in navigator) {
    navigator.serviceWorker.register("/stead-sw.js", { scope: "/" }).then(
      () => navigator.serviceWorker.ready,
      (e) => console.warn("catalog: service worker registration failed", e),
    ).then(() => {
      const worker = navigator.serviceWorker.controller;
      if (worker) worker.postMessage({ type: "check-update" });
    });
    // A newer list was published: take it at once (the catalog keeps no unsaved state).
    const channel = new BroadcastChannel("stead");
    channel.onmessage = (e) => {
      const m = e.data || {};
      const worker = navigator.serviceWorker.controller;
      if (m.type === "update-ready" && worker) worker.postMessage({ type: "activate-update" });
      if (m.type === "activated") location.reload();
    };
  }
})();
