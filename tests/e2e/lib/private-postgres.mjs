// A private PostgreSQL for tests that must crash or restart the database:
// initdb into a temporary folder on a free port, so the machine's shared
// server is never touched.

import { execFile } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import { chmod, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";

import { freePort } from "./harness.mjs";

const execFileP = promisify(execFile);

/** The PostgreSQL server binaries (initdb, pg_ctl), or null. */
export function pgBinDir() {
  const root = "/usr/lib/postgresql";
  if (!existsSync(root)) return null;
  for (const version of readdirSync(root).sort().reverse()) {
    const bin = join(root, version, "bin");
    if (existsSync(join(bin, "initdb")) && existsSync(join(bin, "pg_ctl"))) return bin;
  }
  return null;
}

/** Runs a PostgreSQL server tool; as root through `runuser -u postgres` (initdb and postgres refuse root). */
async function asPostgres(file, args, timeoutMs = 60_000) {
  const isRoot = process.getuid?.() === 0;
  const [cmd, argv] = isRoot ? ["runuser", ["-u", "postgres", "--", file, ...args]] : [file, args];
  try {
    const { stdout } = await execFileP(cmd, argv, { timeout: timeoutMs });
    return stdout;
  } catch (err) {
    throw new Error(`${file} ${args.join(" ")}: ${err.stderr || err.message}`);
  }
}

/**
 * A private PostgreSQL: initdb into a temporary folder, on a free port, trust
 * authentication. `stop()` is an immediate (crash-like) shutdown; `start()`
 * brings it back on the same port; `destroy()` stops it and removes the folder.
 */
export async function startPrivatePostgres() {
  const bin = pgBinDir();
  if (!bin) throw new Error("PostgreSQL server binaries are missing (apt-get install postgresql)");
  const dir = await mkdtemp(join(tmpdir(), "ss-chaos-pg-"));
  await chmod(dir, 0o777); // the postgres user writes its data and socket here
  const data = join(dir, "data");
  const port = await freePort();
  await asPostgres(join(bin, "initdb"), ["-D", data, "-A", "trust", "-U", "postgres", "--no-sync"]);
  // fsync off: the suite crashes the server process, never the machine.
  const options = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200`;
  const pg = {
    port,
    dir,
    url: (db) => `postgres://postgres@127.0.0.1:${port}/${db}`,
    async start() {
      await asPostgres(join(bin, "pg_ctl"), ["-D", data, "-o", options, "-l", join(dir, "pg.log"), "-w", "-t", "60", "start"]);
    },
    async stop() {
      await asPostgres(join(bin, "pg_ctl"), ["-D", data, "-m", "immediate", "-w", "stop"]);
    },
    /** One statement through psql on database `db`; resolves with the rows as text (`|`-separated). */
    async sql(statement, db = "postgres") {
      const { stdout } = await execFileP("psql", [pg.url(db), "-v", "ON_ERROR_STOP=1", "-tAqc", statement], {
        env: { ...process.env, PGCONNECT_TIMEOUT: "5", PGAPPNAME: "chaos-suite" },
        timeout: 15_000,
      });
      return stdout.trim();
    },
    async destroy() {
      await pg.stop().catch(() => {});
      await rm(dir, { recursive: true, force: true });
    },
  };
  try {
    await pg.start();
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
  return pg;
}
