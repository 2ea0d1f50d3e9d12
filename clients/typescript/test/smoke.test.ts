/** Smoke test of the SDK against a real server on the demo model. */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { status } from "@grpc/grpc-js";

import {
  asNumber,
  Consumption,
  DesiderataClient,
  DesiderataError,
  ExplanationKind,
  FeedbackVerdict,
  instance,
  type Explanation,
  type FeatureInput,
  type Instance,
} from "../src/index.js";
import { startServer, type RunningServer } from "./server.js";

const ML_ENGINEER_KEY = "demo-ml_engineer-key"; // demo credentials, public by design
const REGULATOR_KEY = "demo-regulator-key";
const EXECUTIVE_KEY = "demo-executive-key";
const END_USER_KEY = "demo-end_user-key"; // acts for SUBJECT
const DOMAIN_EXPERT_KEY = "demo-domain_expert-key"; // domain "credit"
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
  // The server's own stores (audit log, decisions, feedback, ledger) in a fresh state folder: the
  // default one under the user's state dir is shared by every run and other SDKs' tests and keeps
  // growing, which would make paging the audit log slow and the test depend on others' records.
  const stateDir = mkdtempSync(join(tmpdir(), "desiderata-ts-state-"));

  before(async () => {
    server = await startServer(90_000, { XDG_STATE_HOME: stateDir });
    engineer = new DesiderataClient(server.address, { apiKey: ML_ENGINEER_KEY, insecure: true, timeoutMs: 60_000 });
  });
  after(() => {
    engineer?.close();
    server?.stop();
    rmSync(stateDir, { recursive: true, force: true });
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

  test("feedback on an explanation, then a regulator pages through and verifies the audit log", async () => {
    const { explanation } = await engineer.explain({ ...attribution, instance: applicant() });
    const explained = explanation?.disclosure?.decisionId ?? "";
    assert.notEqual(explained, "");
    const feedback = await engineer.submitFeedback({
      model: "credit",
      decisionId: explained,
      verdict: FeedbackVerdict.FEEDBACK_VERDICT_AGREE,
      shouldMatter: ["income"],
      purpose: "debugging",
    });
    assert.notEqual(feedback.decisionId, "");

    // The engineer may not read the log; the refusal is itself an audited decision.
    let refused = "";
    await assert.rejects(engineer.queryAudit({ model: "credit", purpose: "debugging" }), (err) => {
      assert.ok(err instanceof DesiderataError);
      assert.equal(err.code, status.PERMISSION_DENIED);
      refused = err.errorInfo?.metadata.decision_id ?? "";
      return true;
    });
    assert.notEqual(refused, "", "the refusal names no decision");

    const regulator = new DesiderataClient(server.address, { apiKey: REGULATOR_KEY, insecure: true, timeoutMs: 60_000 });
    try {
      // Pages of 2: the log holds at least the explanation, the feedback and the refusal,
      // so the refusal (logged last of the three) is past the first page.
      const entries = await regulator.auditEntries({ model: "credit", purpose: "audit", pageSize: 2 });
      assert.ok(entries.length > 2, `only ${entries.length} entries: not paged`);
      const ids = entries.map((e) => e.decisionId);
      assert.ok(ids.includes(explained), "the engineer's explanation is not in the log");
      assert.ok(ids.includes(feedback.decisionId), "the feedback is not in the log");
      const denial = entries.find((e) => e.decisionId === refused);
      assert.ok(denial, "the refused QueryAudit is not in the log");
      assert.equal(denial.allowed, false);
      assert.equal(denial.role, "ml_engineer");
      for (const e of entries) assert.equal(e.model, "credit");
      for (let i = 1; i < entries.length; i++) {
        assert.ok(entries[i].seq > entries[i - 1].seq, `seq ${entries[i].seq} after ${entries[i - 1].seq}`);
      }

      const verified = await regulator.verifyAudit({ model: "credit", purpose: "audit" });
      assert.equal(verified.ok, true, verified.problem);
      assert.ok(verified.records >= entries.length);
    } finally {
      regulator.close();
    }
  });

  test("GetGlobalSummary gives an executive mean |attribution| per feature and predicted class", async () => {
    const executive = new DesiderataClient(server.address, { apiKey: EXECUTIVE_KEY, insecure: true, timeoutMs: 60_000 });
    try {
      const summary = await executive.globalSummary("credit", { purpose: "monitoring" });
      assert.equal(summary.model, "credit");
      assert.notEqual(summary.modelVersion, "");
      assert.ok(["integrated_gradients", "permutation_shapley"].includes(summary.method), summary.method);
      assert.equal(summary.disclosure?.tier, "global/summary");
      assert.deepEqual(summary.disclosure?.reasons, ["executive.global_summary"]);
      assert.notEqual(summary.disclosure?.decisionId ?? "", "");
      assert.ok(summary.classes.length > 0, "no classes");
      assert.ok(summary.classes.reduce((n, c) => n + c.rows, 0) > 0, "no reference rows");
      for (const c of summary.classes) {
        assert.notEqual(c.classLabel, "");
        // Every feature of the model, most important first.
        assert.deepEqual(c.features.map((f) => f.feature).sort(), Object.keys(APPLICANT).sort());
        for (const f of c.features) {
          assert.notEqual(f.displayName, "");
          const mean = f.meanAbsAttribution;
          assert.ok(Number.isFinite(mean) && mean >= 0, `${f.feature} mean |attribution| ${mean}`);
          assert.ok(f.share >= 0 && f.share <= 1, `${f.feature} share ${f.share}`);
        }
        const means = c.features.map((f) => f.meanAbsAttribution);
        assert.deepEqual(means, [...means].sort((a, b) => b - a), "features not most important first");
        if (means.some((m) => m > 0)) {
          const shares = c.features.reduce((n, f) => n + f.share, 0);
          assert.ok(Math.abs(shares - 1) < 1e-6, `shares sum to ${shares}`);
        }
      }

      // The version asked for is the one summarized: an unknown one is NOT_FOUND.
      await assert.rejects(executive.globalSummary("credit", { purpose: "monitoring", modelVersion: "99" }), (err) => {
        assert.ok(err instanceof DesiderataError);
        assert.equal(err.code, status.NOT_FOUND);
        return true;
      });
    } finally {
      executive.close();
    }
  });

  test("an executive is PERMISSION_DENIED attribution drift", async () => {
    // Windows of recent decisions can be differenced: the demo policy keeps drift from executives.
    const executive = new DesiderataClient(server.address, { apiKey: EXECUTIVE_KEY, insecure: true, timeoutMs: 60_000 });
    try {
      await assert.rejects(executive.attributionDrift("credit", { purpose: "monitoring" }), (err) => {
        assert.ok(err instanceof DesiderataError);
        assert.equal(err.code, status.PERMISSION_DENIED);
        assert.notEqual(err.errorInfo?.metadata.decision_id ?? "", "", "the refusal names no decision");
        return true;
      });
    } finally {
      executive.close();
    }
  });

  test("GetAttributionDrift compares the newest recorded decisions with the training reference", async () => {
    const monitoring = { purpose: "monitoring" };
    // A window of fewer than 20 decisions is refused, whatever is recorded.
    await assert.rejects(engineer.attributionDrift("credit", { ...monitoring, maxDecisions: 5 }), (err) => {
      assert.ok(err instanceof DesiderataError);
      assert.equal(err.code, status.FAILED_PRECONDITION);
      assert.match(err.details, /at least 20 recorded decisions/);
      return true;
    });
    await assert.rejects(engineer.attributionDrift("credit", { ...monitoring, maxDecisions: 5001 }), (err) => {
      assert.ok(err instanceof DesiderataError);
      assert.equal(err.code, status.INVALID_ARGUMENT);
      return true;
    });

    // Record 21 decisions (other tests may have recorded some before).
    for (let i = 0; i < 21; i++) {
      const predicted = await engineer.predict({
        model: "credit",
        instance: applicant({ age: 20 + i, income: 80 + 7 * i, amount: 500 + 60 * i }),
        subjectId: `drift-${i}`,
      });
      assert.notEqual(predicted.decisionId, "");
    }

    const drift = await engineer.attributionDrift("credit", { ...monitoring, maxDecisions: 20 });
    assert.equal(drift.model, "credit");
    assert.notEqual(drift.modelVersion, "");
    assert.ok(["integrated_gradients", "permutation_shapley"].includes(drift.method), drift.method);
    assert.notEqual(drift.targetClass, "");
    assert.equal(drift.decisions, 20, "maxDecisions was not the window");
    assert.ok(drift.referenceRows > 0);
    assert.ok(drift.firstDecisionAt instanceof Date && drift.lastDecisionAt instanceof Date);
    assert.ok(drift.firstDecisionAt <= drift.lastDecisionAt);
    assert.ok(drift.alpha > 0 && drift.alpha < 1, `alpha ${drift.alpha}`);
    assert.ok(drift.shareDistance >= 0 && drift.shareDistance <= 1, `share distance ${drift.shareDistance}`);
    assert.ok(drift.shareThreshold >= 0 && drift.shareThreshold <= 1, `share threshold ${drift.shareThreshold}`);
    assert.equal(drift.drifted, drift.features.some((f) => f.drifted));
    assert.equal(drift.disclosure?.tier, "global/drift");
    assert.notEqual(drift.disclosure?.decisionId ?? "", "");
    assert.deepEqual(drift.features.map((f) => f.feature).sort(), Object.keys(APPLICANT).sort());
    for (const f of drift.features) {
      assert.ok(f.referenceMeanAbsAttribution >= 0 && f.recentMeanAbsAttribution >= 0, f.feature);
      assert.ok(f.ksStatistic >= 0 && f.ksStatistic <= 1, `${f.feature} KS ${f.ksStatistic}`);
      assert.ok(f.pValue >= 0 && f.pValue <= 1, `${f.feature} p ${f.pValue}`);
    }
    const ks = drift.features.map((f) => f.ksStatistic);
    assert.deepEqual(ks, [...ks].sort((a, b) => b - a), "features not most drifted first");

    // Unset maxDecisions: the server's default window (500) holds every decision recorded so far.
    const all = await engineer.attributionDrift("credit", monitoring);
    assert.ok(all.decisions > 20, `${all.decisions} decisions in the default window`);
  });

  test("ListDecisions: an end user pages through their own decisions, newest first, and explains one", async () => {
    // Other tests record decisions about SUBJECT too: the three recorded here are its newest.
    const mine: string[] = [];
    for (let i = 0; i < 3; i++) {
      mine.push((await engineer.predict({ model: "credit", instance: applicant(), subjectId: SUBJECT })).decisionId);
    }
    const theirs = (await engineer.predict({ model: "credit", instance: applicant(), subjectId: "applicant-0002" }))
      .decisionId;
    assert.equal(new Set([...mine, theirs, ""]).size, 5, "predict returned an empty or repeated decision id");

    const denial = (err: unknown): string => {
      assert.ok(err instanceof DesiderataError);
      assert.equal(err.code, status.PERMISSION_DENIED);
      const id = err.errorInfo?.metadata.decision_id ?? "";
      assert.notEqual(id, "", "the refusal names no decision");
      return id;
    };
    let engineerRefusal = "";
    await assert.rejects(engineer.listDecisions("credit", { purpose: "debugging", subjectId: SUBJECT }), (err) => {
      engineerRefusal = denial(err);
      return true;
    });

    const user = new DesiderataClient(server.address, { apiKey: END_USER_KEY, insecure: true, timeoutMs: 60_000 });
    const officer = new DesiderataClient(server.address, { apiKey: DOMAIN_EXPERT_KEY, insecure: true, timeoutMs: 60_000 });
    const regulator = new DesiderataClient(server.address, { apiKey: REGULATOR_KEY, insecure: true, timeoutMs: 60_000 });
    try {
      const own = { purpose: "transparency", pageSize: 2 };
      const first = await user.listDecisions("credit", own);
      assert.equal(first.decisions.length, 2, "pageSize was not the page's size");
      assert.notEqual(first.nextPageToken, "", "no token after the first of several pages");
      const listed = [...first.decisions];
      let pages = 1;
      for (let token = first.nextPageToken; token !== ""; pages++) {
        const page = await user.listDecisions("credit", { ...own, pageToken: token });
        assert.ok(page.decisions.length >= 1 && page.decisions.length <= 2, `a page of ${page.decisions.length}`);
        for (const d of page.decisions) {
          assert.ok(!listed.some((l) => l.decisionId === d.decisionId), `${d.decisionId} listed twice`);
        }
        listed.push(...page.decisions);
        token = page.nextPageToken;
      }
      const ids = listed.map((d) => d.decisionId);
      assert.deepEqual(ids.slice(0, 3), [...mine].reverse(), "the new decisions are not first, newest first");
      assert.ok(!ids.includes(theirs), "another subject's decision listed");
      for (const d of listed) {
        assert.equal(d.model, "credit");
        assert.notEqual(d.modelVersion, "");
        assert.ok(["good", "bad"].includes(d.predictedClass), `predicted class ${JSON.stringify(d.predictedClass)}`);
        assert.ok(d.recordedAt instanceof Date, "no recordedAt");
      }
      for (let i = 1; i < listed.length; i++) {
        assert.ok(listed[i].recordedAt! <= listed[i - 1].recordedAt!, `decision ${i} is newer than the one before`);
      }
      // decisions() follows the tokens itself: the same list.
      assert.deepEqual((await user.decisions("credit", own)).map((d) => d.decisionId), ids);

      // A token this server did not issue is refused before the policy is asked (not audited).
      await assert.rejects(user.listDecisions("credit", { ...own, pageToken: "not-a-token" }), (err) => {
        assert.ok(err instanceof DesiderataError);
        assert.equal(err.code, status.INVALID_ARGUMENT);
        assert.deepEqual((err.badRequest ?? []).map((v) => v.field), ["page_token"]);
        return true;
      });

      // The end user lists only their own subject's decisions.
      let userRefusal = "";
      await assert.rejects(
        user.listDecisions("credit", { purpose: "transparency", subjectId: "applicant-0002" }),
        (err) => {
          userRefusal = denial(err);
          assert.ok(err instanceof DesiderataError);
          assert.match(err.errorInfo?.metadata.reasons ?? "", /end_user\.own_decisions_only/);
          return true;
        },
      );

      // ... and may explain one of them by its listed id.
      const { explanation } = await user.explainDecision({
        decisionId: ids[0],
        kind: ExplanationKind.EXPLANATION_KIND_FEATURE_ATTRIBUTION,
        purpose: "transparency",
        consumption: Consumption.CONSUMPTION_STATIC,
      });
      assert.equal(explanation?.recordedDecisionId, ids[0]);
      assert.equal(explanation?.disclosure?.tier, "feature_attribution/narrative");

      // A loan officer handling a contest lists another subject's decisions.
      const contest = await officer.decisions("credit", { purpose: "contest", subjectId: "applicant-0002" });
      assert.equal(contest[0]?.decisionId, theirs, "the officer does not find applicant-0002's newest decision");
      assert.ok(!contest.some((d) => mine.includes(d.decisionId)), "applicant-0001's decisions listed");

      // Every list is audited, allowed or not.
      const lists = await regulator.auditEntries({ model: "credit", purpose: "audit", action: "decisions/list" });
      const refusals = lists.filter((e) => !e.allowed).map((e) => [e.decisionId, e.role, e.purpose]);
      assert.deepEqual(refusals, [
        [engineerRefusal, "ml_engineer", "debugging"],
        [userRefusal, "end_user", "transparency"],
      ]);
      const allowed = lists.filter((e) => e.allowed).map((e) => `${e.role} ${e.purpose}`);
      // One audited list per page: the walk above, then decisions() over the same pages.
      assert.deepEqual(allowed, [...Array<string>(2 * pages).fill("end_user transparency"), "domain_expert contest"]);
      for (const e of lists) assert.equal(e.action, "decisions/list");
    } finally {
      user.close();
      officer.close();
      regulator.close();
    }
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

  test("ExplainBatch: one explanation per row, in order, each the one Explain gives the row alone", async () => {
    const rows = [500, 1500, 4000].map((amount) => ({ ...APPLICANT, amount }));
    const batch = await engineer.explainBatch("credit", rows, "debugging");
    assert.equal(batch.length, 3);
    const values = (ex: Explanation | undefined) =>
      (ex?.featureAttribution?.attributions ?? []).map((a) => [a.feature, a.value] as const);
    // Three different rows, three different answers: a mix-up of the order would show.
    assert.equal(new Set(batch.map((ex) => JSON.stringify(values(ex)))).size, 3, "rows with the same answer");
    for (const [i, row] of rows.entries()) {
      assert.equal(batch[i].kind, ExplanationKind.EXPLANATION_KIND_FEATURE_ATTRIBUTION);
      assert.ok(values(batch[i]).length > 0, `no attributions for row ${i}`);
      const { explanation } = await engineer.explain({ ...attribution, instance: instance(row) });
      assert.deepEqual(values(batch[i]), values(explanation), `row ${i} differs from its Explain`);
    }
  });

  test("ExplainBatch names the invalid field of the row it is in, and sends nothing for a row it cannot convert", async () => {
    const rows = [APPLICANT, { ...APPLICANT, bogus: 1 }]; // two rows: a reversed batch would name instances[0]
    await assert.rejects(engineer.explainBatch("credit", rows, "debugging"), (err) => {
      assert.ok(err instanceof DesiderataError);
      assert.equal(err.code, status.INVALID_ARGUMENT);
      const fields = (err.badRequest ?? []).map((v) => v.field);
      assert.ok(fields.includes("instances[1].features[bogus]"), `bogus not named: ${fields.join(", ")}`);
      return true;
    });
    const unconvertible = [APPLICANT, { ...APPLICANT, income: null as unknown as FeatureInput }];
    await assert.rejects(engineer.explainBatch("credit", unconvertible, "debugging"), (err) => {
      assert.ok(err instanceof TypeError && !(err instanceof DesiderataError));
      assert.match(err.message, /^rows\[1\]: feature "income"/);
      return true;
    });
  });

  test("an end user is PERMISSION_DENIED a batch of submitted instances", async () => {
    const user = new DesiderataClient(server.address, { apiKey: END_USER_KEY, insecure: true, timeoutMs: 60_000 });
    try {
      await assert.rejects(user.explainBatch("credit", [APPLICANT, { ...APPLICANT, amount: 1500 }], "transparency"), (err) => {
        assert.ok(err instanceof DesiderataError);
        assert.equal(err.code, status.PERMISSION_DENIED);
        assert.notEqual(err.errorInfo?.metadata.decision_id ?? "", "", "the refusal names no decision");
        return true;
      });
    } finally {
      user.close();
    }
  });

  test("ExplainBatch of recorded decisions: one explanation per decision, in order; an unknown id is NOT_FOUND", async () => {
    // Two different applicants, so the two decisions (and their answers) differ.
    const ids: string[] = [];
    for (const [i, amount] of [700, 3000].entries()) {
      const predicted = await engineer.predict({
        model: "credit",
        instance: applicant({ amount }),
        subjectId: `batch-decision-${i}`,
      });
      ids.push(predicted.decisionId);
    }
    assert.equal(new Set([...ids, ""]).size, 3, "predict returned an empty or repeated decision id");

    const batch = await engineer.explainDecisions(ids, "debugging");
    assert.equal(batch.length, 2);
    // In the ids' order: a reversed answer would name the second decision first.
    assert.deepEqual(batch.map((ex) => ex.recordedDecisionId), ids);
    for (const [i, ex] of batch.entries()) {
      assert.equal(ex.kind, ExplanationKind.EXPLANATION_KIND_FEATURE_ATTRIBUTION);
      assert.ok((ex.featureAttribution?.attributions.length ?? 0) > 0, `no attributions for decision ${i}`);
    }

    // All or nothing: one unknown id fails the batch, naming its index.
    await assert.rejects(engineer.explainDecisions([ids[0], "rec_doesnotexist"], "debugging"), (err) => {
      assert.ok(err instanceof DesiderataError);
      assert.equal(err.code, status.NOT_FOUND);
      assert.match(err.details, /decision_ids\[1\]/);
      return true;
    });
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
