/** Channel credentials that carry an API key as `authorization: Bearer <key>`. */
import { credentials, Metadata, type ChannelCredentials, type Interceptor, InterceptingCall } from "@grpc/grpc-js";

export interface ConnectionOptions {
  /** API key, sent as `authorization: Bearer <key>` on every call. */
  apiKey?: string;
  /**
   * Plaintext connection; the key is then sent in clear: only for a local
   * server or a trusted sidecar. Default: TLS with the system roots.
   */
  insecure?: boolean;
  /** PEM root certificates for TLS instead of the system roots. */
  rootCerts?: Buffer;
}

/** The bearer header of an API key. */
export function bearerMetadata(apiKey: string): Metadata {
  const md = new Metadata();
  md.set("authorization", `Bearer ${apiKey}`);
  return md;
}

/**
 * Channel credentials plus, for plaintext connections, the interceptor that
 * adds the key (grpc-js refuses call credentials on an insecure channel).
 */
export function channelCredentials(opts: ConnectionOptions): {
  credentials: ChannelCredentials;
  interceptors: Interceptor[];
} {
  if (opts.insecure) {
    const interceptors: Interceptor[] = [];
    if (opts.apiKey !== undefined) {
      const key = opts.apiKey;
      interceptors.push(
        (options, nextCall) =>
          new InterceptingCall(nextCall(options), {
            start(metadata, listener, next) {
              metadata.merge(bearerMetadata(key));
              next(metadata, listener);
            },
          }),
      );
    }
    return { credentials: credentials.createInsecure(), interceptors };
  }
  const tls = credentials.createSsl(opts.rootCerts ?? null);
  if (opts.apiKey === undefined) return { credentials: tls, interceptors: [] };
  const key = opts.apiKey;
  const perCall = credentials.createFromMetadataGenerator((_params, callback) => callback(null, bearerMetadata(key)));
  return { credentials: credentials.combineChannelCredentials(tls, perCall), interceptors: [] };
}
