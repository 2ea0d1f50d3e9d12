package dev.desiderata.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.protobuf.Any;
import com.google.rpc.BadRequest;
import com.google.rpc.Code;
import com.google.rpc.ErrorInfo;
import com.google.rpc.QuotaFailure;
import com.google.rpc.RetryInfo;
import io.grpc.Status;
import io.grpc.protobuf.StatusProto;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

/** ErrorDetails against hand-built statuses (no server needed). */
class ErrorDetailsTest {
  @Test
  void decodesEveryDetail() {
    var status =
        com.google.rpc.Status.newBuilder()
            .setCode(Code.RESOURCE_EXHAUSTED_VALUE)
            .setMessage("budget spent")
            .addDetails(
                Any.pack(
                    BadRequest.newBuilder()
                        .addFieldViolations(
                            BadRequest.FieldViolation.newBuilder()
                                .setField("instance")
                                .setDescription("unknown")
                                .setReason("R"))
                        .build()))
            .addDetails(
                Any.pack(ErrorInfo.newBuilder().setReason("BUDGET").setDomain("d").putMetadata("k", "v").build()))
            .addDetails(
                Any.pack(
                    QuotaFailure.newBuilder()
                        .addViolations(QuotaFailure.Violation.newBuilder().setSubject("s").setDescription("q"))
                        .build()))
            .addDetails(
                Any.pack(
                    RetryInfo.newBuilder()
                        .setRetryDelay(com.google.protobuf.Duration.newBuilder().setSeconds(1).setNanos(500_000_000))
                        .build()))
            .build();
    var details = ErrorDetails.from(StatusProto.toStatusRuntimeException(status));
    assertEquals(Status.Code.RESOURCE_EXHAUSTED, details.code());
    assertEquals("budget spent", details.message());
    assertEquals(List.of(new ErrorDetails.FieldViolation("instance", "unknown", "R")), details.badRequest());
    assertEquals(new ErrorDetails.Info("BUDGET", "d", Map.of("k", "v")), details.errorInfo().orElseThrow());
    assertEquals(List.of(new ErrorDetails.QuotaViolation("s", "q")), details.quotaFailure());
    assertEquals(Duration.ofMillis(1500), details.retryDelay().orElseThrow());
  }

  @Test
  void withoutDetailsKeepsCodeOnly() {
    var details = ErrorDetails.from(Status.UNAUTHENTICATED.withDescription("no key").asRuntimeException());
    assertEquals(Status.Code.UNAUTHENTICATED, details.code());
    assertEquals("no key", details.message());
    assertTrue(details.badRequest().isEmpty());
    assertTrue(details.errorInfo().isEmpty());
    assertTrue(details.retryDelay().isEmpty());
  }
}
