package dev.desiderata.client;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * The real server as a process: $DESIDERATA_SERVE_CMD (default "desiderata serve --port 0") prints
 * "desiderata listening on 127.0.0.1:&lt;port&gt;" once serving.
 */
final class TestServer implements AutoCloseable {
  private static final Pattern LISTENING = Pattern.compile("desiderata listening on (\\S+:\\d+)");

  private final Process process;
  final String address;

  private TestServer(Process process, String address) {
    this.process = process;
    this.address = address;
  }

  static TestServer start() throws Exception {
    String command = System.getenv().getOrDefault("DESIDERATA_SERVE_CMD", "desiderata serve --port 0");
    Process process =
        new ProcessBuilder(List.of(command.trim().split("\\s+")))
            .redirectError(ProcessBuilder.Redirect.INHERIT)
            .start();
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
      return new TestServer(process, address.get(90, TimeUnit.SECONDS));
    } catch (Exception e) {
      process.destroyForcibly();
      throw new IllegalStateException(command + " did not start listening", e);
    }
  }

  @Override
  public void close() throws InterruptedException {
    process.destroy();
    if (!process.waitFor(10, TimeUnit.SECONDS)) {
      process.destroyForcibly();
    }
  }
}
