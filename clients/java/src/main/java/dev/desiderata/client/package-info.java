/**
 * Java client of the desiderata v1 API: {@link dev.desiderata.client.DesiderataClient} (API key,
 * TLS, default deadlines), {@link dev.desiderata.client.Instances} (instances from plain Java values)
 * and {@link dev.desiderata.client.ErrorDetails} (rich error details).
 * Generated messages and stubs are in {@code dev.desiderata.v1}.
 */
package dev.desiderata.client;
