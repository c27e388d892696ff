// socket.io peer for ss-bench (docs/benchmarks.md): what a team would write
// instead of our hub. Rooms, nothing persisted.
//
//   node server.js            listens on 127.0.0.1, a free port (PORT to choose one)
//
// - A client emits `join` with a room name (and, optionally, an ack callback,
//   called with the room once joined).
// - `POST /publish` with {"room": "..." or ["...", ...], "payload": {...}}
//   emits `JobAssigned` with the payload to the room(s) (a socket in several
//   of them gets it once); the answer is 204.
// - Prints `socket.io listening on http://127.0.0.1:PORT` once listening.
"use strict";

const http = require("node:http");
const { Server } = require("socket.io");

const server = http.createServer((req, res) => {
  if (req.method !== "POST" || req.url !== "/publish") {
    res.writeHead(404).end();
    return;
  }
  const chunks = [];
  req.on("data", (chunk) => chunks.push(chunk));
  req.on("end", () => {
    let message;
    try {
      message = JSON.parse(Buffer.concat(chunks).toString("utf8"));
    } catch {
      res.writeHead(400).end("body is not JSON");
      return;
    }
    const rooms = Array.isArray(message.room) ? message.room : [message.room];
    if (rooms.length === 0 || rooms.some((room) => typeof room !== "string") || message.payload === undefined) {
      res.writeHead(400).end("expected {room, payload}");
      return;
    }
    io.to(rooms).emit("JobAssigned", message.payload);
    res.writeHead(204).end();
  });
});

// Defaults otherwise (pingInterval 25 s, pingTimeout 20 s, no compression).
const io = new Server(server, { transports: ["websocket"], serveClient: false });

io.on("connection", (socket) => {
  socket.on("join", (room, ack) => {
    if (typeof room !== "string") return;
    socket.join(room);
    if (typeof ack === "function") ack(room);
  });
});

server.listen({ host: "127.0.0.1", port: Number(process.env.PORT || 0), backlog: 4096 }, () => {
  console.log(`socket.io listening on http://127.0.0.1:${server.address().port}`);
});

for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => {
    io.close();
    process.exit(0);
  });
}
