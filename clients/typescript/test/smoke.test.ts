/** Smoke test of the SDK against a real server on the demo model. */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { status } from "@grpc/grpc-js";

import {
  asNumber,
  Consumption,
  DesiderataClient,
  DesiderataError,
  ExplanationKind,
  instance,
  type FeatureInput,
  type Instance,
} from "../src/index.js";
import { startServer, type RunningServer } from "./server.js";

const ML_ENGINEER_KEY = "demo-ml_engineer-key"; // demo credential, public by design
const SUBJECT = "applicant-0001";

/** The demo applicant's values; integral numbers go as integers, which `number` features accept too. */
const APPLICANT: Record<string, FeatureInput> = {
  seniority: 9,
  home: "rent",
  time: 60,
  age: 30,
  marital: "married",
  records: false,
  job: "freelance",
  expenses: 73,
  income: 129,
  assets: 0,
  debt: 0,
  amount: 800,
  price: asNumber(846), // sent as a float, as the server would also accept
};

function applicant(overrides: Record<string, FeatureInput> = {}): Instance {
  return instance({ ...APPLICANT, ...overrides });
}

const attribution = {
  model: "credit",
  kind: ExplanationKind.EXPLANATION_KIND_FEATURE_ATTRIBUTION,
  purpose: "debugging",
  consumption: Consumption.CONSUMPTION_STATIC,
};

describe("desiderata TypeScript SDK against a real server", () => {
  let server: RunningServer;
  let engineer: DesiderataClient;

  before(async () => {
    server = await startServer();
    engineer = new DesiderataClient(server.address, { apiKey: ML_ENGINEER_KEY, insecure: true, timeoutMs: 60_000 });
  });
  after(() => {
    engineer?.close();
    server?.stop();
  });

  test("a round_robin client reaches the server through an address list", async () => {
    const balanced = new DesiderataClient(`ipv4:${server.address}`, {
      apiKey: ML_ENGINEER_KEY,
      insecure: true,
      timeoutMs: 60_000,
      loadBalancing: "round_robin",
    });
    try {
      const { explanation } = await balanced.explain({ ...attribution, instance: applicant() });
      assert.ok((explanation?.featureAttribution?.attributions.length ?? 0) > 0);
    } finally {
      balanced.close();
    }
    assert.throws(
      () => new DesiderataClient("x", { insecure: true, loadBalancing: "random" as "round_robin" }),
      /loadBalancing must be/,
    );
  });

  test("Explain returns feature attributions with a policy decision", async () => {
    const { explanation } = await engineer.explain({ ...attribution, instance: applicant() });
    assert.equal(explanation?.kind, ExplanationKind.EXPLANATION_KIND_FEATURE_ATTRIBUTION);
    const attributions = explanation?.featureAttribution?.attributions ?? [];
    assert.ok(attributions.length > 0, "no attributions");
    for (const a of attributions) assert.notEqual(a.feature, "");
    assert.notEqual(explanation?.disclosure?.decisionId ?? "", "");
  });

  test("GetCapabilities reports the caller's role and kinds", async () => {
    const caps = await engineer.getCapabilities({
      model: "credit",
      purpose: "debugging",
      consumption: Consumption.CONSUMPTION_STATIC,
    });
    assert.equal(caps.role, "ml_engineer");
    assert.ok(caps.capabilities.some((c) => c.kind === ExplanationKind.EXPLANATION_KIND_FEATURE_ATTRIBUTION));
  });

  test("ExplainDecision explains a decision recorded by Predict", async () => {
    const predicted = await engineer.predict({ model: "credit", instance: applicant(), subjectId: SUBJECT });
    assert.notEqual(predicted.decisionId, "");
    assert.ok((predicted.prediction?.probabilities.length ?? 0) > 0);
    const { explanation } = await engineer.explainDecision({
      decisionId: predicted.decisionId,
      kind: ExplanationKind.EXPLANATION_KIND_FEATURE_ATTRIBUTION,
      purpose: "debugging",
      consumption: Consumption.CONSUMPTION_STATIC,
    });
    assert.equal(explanation?.recordedDecisionId, predicted.decisionId);
    assert.ok((explanation?.featureAttribution?.attributions.length ?? 0) > 0);
  });

  test("a call without credentials is UNAUTHENTICATED", async () => {
    const anonymous = new DesiderataClient(server.address, { insecure: true });
    try {
      await assert.rejects(anonymous.explain({ ...attribution, instance: applicant() }), (err) => {
        assert.ok(err instanceof DesiderataError);
        assert.equal(err.code, status.UNAUTHENTICATED);
        return true;
      });
    } finally {
      anonymous.close();
    }
  });

  test("an unknown and a missing feature are INVALID_ARGUMENT with field violations", async () => {
    const { seniority: _dropped, ...rest } = APPLICANT;
    await assert.rejects(engineer.explain({ ...attribution, instance: instance({ ...rest, shoe_size: 42.5 }) }), (err) => {
      assert.ok(err instanceof DesiderataError);
      assert.equal(err.code, status.INVALID_ARGUMENT);
      assert.ok(err.badRequest && err.badRequest.length > 0, "no field violations decoded");
      for (const v of err.badRequest) {
        assert.notEqual(v.field, "");
        assert.notEqual(v.description, "");
      }
      const fields = err.badRequest.map((v) => v.field);
      assert.ok(fields.includes("instance.features[seniority]"), `seniority not named: ${fields.join(", ")}`);
      assert.ok(fields.includes("instance.features[shoe_size]"), `shoe_size not named: ${fields.join(", ")}`);
      return true;
    });
  });

  test("NaN and Infinity reach the server, which rejects them naming the feature", async () => {
    await assert.rejects(
      engineer.explain({ ...attribution, instance: applicant({ income: NaN, debt: Infinity }) }),
      (err) => {
        assert.ok(err instanceof DesiderataError);
        assert.equal(err.code, status.INVALID_ARGUMENT);
        const fields = (err.badRequest ?? []).map((v) => v.field).sort();
        assert.deepEqual(fields, ["instance.features[debt]", "instance.features[income]"]);
        return true;
      },
    );
  });

  test("leaving an ExplainStream early cancels the call and frees the server's worker", async () => {
    // One worker, and a stream asking for far more work than the next call's deadline allows:
    // if leaving the loop did not cancel the call, the next call would queue behind it and time out.
    const single = await startServer(90_000, {
      DESIDERATA_SERVER__WORKERS: "1",
      DESIDERATA_EXPLAIN__MAX_SAMPLES: "50000000",
    });
    const client = new DesiderataClient(single.address, { apiKey: ML_ENGINEER_KEY, insecure: true, timeoutMs: 60_000 });
    try {
      const endless = { method: "permutation_shapley", targetStdError: 1e-9, maxSamples: 50_000_000 };
      let refinements = 0;
      for await (const response of client.explainStream({
        request: { ...attribution, instance: applicant(), params: { attribution: endless } },
      })) {
        assert.equal(response.final, false);
        refinements += 1;
        break;
      }
      assert.equal(refinements, 1);
      const { explanation } = await client.explain(
        { ...attribution, instance: applicant(), params: { attribution: { method: "integrated_gradients" } } },
        { timeoutMs: 5_000 },
      );
      assert.ok((explanation?.featureAttribution?.attributions.length ?? 0) > 0);
    } finally {
      client.close();
      single.stop();
    }
  });
});
