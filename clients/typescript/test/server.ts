/**
 * Starts the real server: $DESIDERATA_SERVE_CMD (default "desiderata serve
 * --port 0") prints "desiderata listening on 127.0.0.1:<port>" once serving.
 * `env` adds settings (DESIDERATA_SECTION__FIELD variables) to that server's environment.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";

const LISTENING = /desiderata listening on (\S+:\d+)/;

export interface RunningServer {
  address: string;
  stop(): void;
}

export function startServer(timeoutMs = 90_000, env: Record<string, string> = {}): Promise<RunningServer> {
  const command = process.env.DESIDERATA_SERVE_CMD ?? "desiderata serve --port 0";
  const [exe, ...args] = command.split(/\s+/).filter(Boolean);
  const child: ChildProcess = spawn(exe, args, {
    stdio: ["ignore", "pipe", "inherit"],
    env: { ...process.env, ...env },
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill();
      reject(new Error(`${command} did not print "desiderata listening on" within ${timeoutMs} ms`));
    }, timeoutMs);
    child.on("error", (err) => {
      clearTimeout(timer);
      reject(new Error(`starting ${command}: ${err.message}`));
    });
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`${command} exited (${code}) before listening`));
    });
    // Keeps reading stdout for the server's lifetime so it never blocks on a full pipe.
    createInterface({ input: child.stdout! }).on("line", (line) => {
      const m = LISTENING.exec(line);
      if (m) {
        clearTimeout(timer);
        child.removeAllListeners("exit");
        resolve({ address: m[1], stop: () => child.kill() });
      }
    });
  });
}
