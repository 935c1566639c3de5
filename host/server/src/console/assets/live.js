// runbox console: one stream of changes for every open tab of a browser.
// A browser keeps at most six HTTP/1.1 connections to a host; a stream
// per tab would leave the seventh tab unable to load. So the tabs share
// this worker, and it holds the one EventSource.
"use strict";

const ports = new Set();
let events = null;

// "open" tells a tab the stream is listening: what was committed between
// its page's rendering and then came before the stream, so it looks once.
function stream() {
  if (events) return;
  events = new EventSource("/ui/events");
  events.addEventListener("open", () => {
    for (const port of ports) port.postMessage("open");
  });
  events.addEventListener("changed", (e) => {
    for (const port of ports) port.postMessage(e.data);
  });
}

onconnect = (e) => {
  const port = e.ports[0];
  ports.add(port);
  port.onmessage = (m) => {
    if (m.data === "bye") ports.delete(port);
  };
  stream();
  if (events.readyState === EventSource.OPEN) port.postMessage("open");
};
