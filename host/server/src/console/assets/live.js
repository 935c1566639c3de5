// runbox console: one stream of changes for every open tab of a browser.
// A browser keeps at most six HTTP/1.1 connections to a host; a stream
// per tab would leave the seventh tab unable to load. So the tabs share
// this worker, and it holds the one EventSource.
//
// Each tab says what it shows ("all", or an incident id); the worker wakes
// only the tabs a change concerns. Waking every tab for every commit costs
// a hundred renderer processes a wake-up per commit.
//
// A page loads this file too, for `concerning`, where the browser has no
// shared worker (Chrome on Android) and the tab holds its own stream.
"use strict";

// What a `changed` event (`[{id, part?}]`, the id "*" meaning anything may
// have changed) tells a tab that shows `shown`: `{part}` (the changed part
// of its page, rendered by the server), "changed" (it looks again), or
// null (nothing it shows).
function concerning(changes, shown) {
  if (shown === "all" || changes.some((c) => c.id === "*")) return "changed";
  const c = changes.find((c) => c.id === shown);
  if (!c) return null;
  return c.part ? { part: c.part } : "changed";
}

if (typeof SharedWorkerGlobalScope !== "undefined" && self instanceof SharedWorkerGlobalScope) {
  const shows = new Map(); // port -> what its tab shows
  let events = null;

  // "open" tells every tab the stream listens: what was committed between
  // its page's rendering and then came before the stream, so it looks once.
  const stream = () => {
    if (events) return;
    events = new EventSource("/ui/events");
    events.addEventListener("open", () => {
      for (const port of shows.keys()) port.postMessage("open");
    });
    events.addEventListener("changed", (e) => {
      const changes = JSON.parse(e.data);
      for (const [port, shown] of shows) {
        const m = concerning(changes, shown);
        if (m) port.postMessage(m);
      }
    });
  };

  self.onconnect = (e) => {
    const port = e.ports[0];
    port.onmessage = (m) => {
      if (m.data === "bye") shows.delete(port);
      else if (m.data && typeof m.data.show === "string") {
        shows.set(port, m.data.show);
        stream();
        if (events.readyState === EventSource.OPEN) port.postMessage("open");
      }
    };
  };
}
