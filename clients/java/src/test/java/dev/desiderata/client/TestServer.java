package dev.desiderata.client;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Comparator;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Stream;

/**
 * The real server as a process: $DESIDERATA_SERVE_CMD (default "desiderata serve --port 0") prints
 * "desiderata listening on 127.0.0.1:&lt;port&gt;" once serving.
 */
final class TestServer implements AutoCloseable {
  private static final Pattern LISTENING = Pattern.compile("desiderata listening on (\\S+:\\d+)");

  private final Process process;
  private final Path stateDir;
  final String address;

  private TestServer(Process process, Path stateDir, String address) {
    this.process = process;
    this.stateDir = stateDir;
    this.address = address;
  }

  static TestServer start() throws Exception {
    String command = System.getenv().getOrDefault("DESIDERATA_SERVE_CMD", "desiderata serve --port 0");
    // The server's stores (audit log, decisions, feedback, ledger) go to a fresh state folder:
    // a test sees only its own records, not those of earlier runs or other SDKs' servers.
    Path stateDir = Files.createTempDirectory("desiderata-java-state-");
    ProcessBuilder builder =
        new ProcessBuilder(List.of(command.trim().split("\\s+")))
            .redirectError(ProcessBuilder.Redirect.INHERIT);
    builder.environment().put("XDG_STATE_HOME", stateDir.toString());
    Process process = builder.start();
    CompletableFuture<String> address = new CompletableFuture<>();
    Thread reader =
        new Thread(
            () -> {
              // Keeps draining stdout for the server's lifetime so it never blocks on a full pipe.
              try (var out =
                  new BufferedReader(new InputStreamReader(process.getInputStream(), StandardCharsets.UTF_8))) {
                for (String line; (line = out.readLine()) != null; ) {
                  Matcher m = LISTENING.matcher(line);
                  if (m.find()) {
                    address.complete(m.group(1));
                  }
                }
              } catch (IOException ignored) {
                // the process ended
              }
              address.completeExceptionally(new IllegalStateException(command + " exited before listening"));
            },
            "desiderata-server-stdout");
    reader.setDaemon(true);
    reader.start();
    try {
      return new TestServer(process, stateDir, address.get(90, TimeUnit.SECONDS));
    } catch (Exception e) {
      process.destroyForcibly();
      throw new IllegalStateException(command + " did not start listening", e);
    }
  }

  @Override
  public void close() throws InterruptedException, IOException {
    process.destroy();
    if (!process.waitFor(10, TimeUnit.SECONDS)) {
      process.destroyForcibly().waitFor(10, TimeUnit.SECONDS);
    }
    try (Stream<Path> paths = Files.walk(stateDir)) {
      for (Path p : paths.sorted(Comparator.reverseOrder()).toList()) {
        Files.deleteIfExists(p);
      }
    }
  }
}
