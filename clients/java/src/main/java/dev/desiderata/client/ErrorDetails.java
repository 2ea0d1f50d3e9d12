package dev.desiderata.client;

import com.google.protobuf.Any;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.rpc.BadRequest;
import com.google.rpc.ErrorInfo;
import com.google.rpc.QuotaFailure;
import com.google.rpc.RetryInfo;
import io.grpc.Status;
import io.grpc.protobuf.StatusProto;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Optional;

/**
 * A failed call's status with its rich details (google.rpc BadRequest, ErrorInfo, QuotaFailure,
 * RetryInfo) decoded. Details the server did not send are empty.
 */
public record ErrorDetails(
    Status.Code code,
    String message,
    List<FieldViolation> badRequest,
    Optional<Info> errorInfo,
    List<QuotaViolation> quotaFailure,
    Optional<Duration> retryDelay) {

  /** One entry of google.rpc.BadRequest. */
  public record FieldViolation(String field, String description, String reason) {}

  /** google.rpc.ErrorInfo. */
  public record Info(String reason, String domain, Map<String, String> metadata) {}

  /** One entry of google.rpc.QuotaFailure. */
  public record QuotaViolation(String subject, String description) {}

  /** Decodes a StatusRuntimeException / StatusException (or anything that wraps one). */
  public static ErrorDetails from(Throwable t) {
    com.google.rpc.Status proto = StatusProto.fromThrowable(t);
    Status status = Status.fromThrowable(t);
    if (proto == null) {
      return new ErrorDetails(
          status.getCode(), String.valueOf(status.getDescription()), List.of(), Optional.empty(), List.of(),
          Optional.empty());
    }
    List<FieldViolation> violations = new ArrayList<>();
    Optional<Info> info = Optional.empty();
    List<QuotaViolation> quota = new ArrayList<>();
    Optional<Duration> retry = Optional.empty();
    for (Any any : proto.getDetailsList()) {
      try {
        if (any.is(BadRequest.class)) {
          for (var v : any.unpack(BadRequest.class).getFieldViolationsList()) {
            violations.add(new FieldViolation(v.getField(), v.getDescription(), v.getReason()));
          }
        } else if (any.is(ErrorInfo.class)) {
          ErrorInfo e = any.unpack(ErrorInfo.class);
          info = Optional.of(new Info(e.getReason(), e.getDomain(), Map.copyOf(e.getMetadataMap())));
        } else if (any.is(QuotaFailure.class)) {
          for (var v : any.unpack(QuotaFailure.class).getViolationsList()) {
            quota.add(new QuotaViolation(v.getSubject(), v.getDescription()));
          }
        } else if (any.is(RetryInfo.class)) {
          var d = any.unpack(RetryInfo.class).getRetryDelay();
          retry = Optional.of(Duration.ofSeconds(d.getSeconds(), d.getNanos()));
        }
      } catch (InvalidProtocolBufferException e) {
        // A malformed detail is skipped; code and message still describe the failure.
      }
    }
    return new ErrorDetails(
        Status.fromCodeValue(proto.getCode()).getCode(), proto.getMessage(), List.copyOf(violations), info,
        List.copyOf(quota), retry);
  }
}
