// The Workbox 7 side of `cargo xtask bench sw`: the anchor Stead's worker is measured
// against. Precache every bundle file (the list is put in `self.__WB_MANIFEST` ahead of
// this script by the bench, one `{url, revision}` per file with its SHA-256 as the
// revision), serve the precache first, everything else CacheFirst. xtask bundles this
// with esbuild into one classic script that replaces `stead-sw.js` on the Workbox site.
import { clientsClaim } from "workbox-core";
import { precacheAndRoute } from "workbox-precaching";
import { setDefaultHandler } from "workbox-routing";
import { CacheFirst } from "workbox-strategies";

self.skipWaiting();
clientsClaim();
precacheAndRoute(self.__WB_MANIFEST || []);
setDefaultHandler(new CacheFirst());
