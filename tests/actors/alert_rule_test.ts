import assert from "node:assert/strict";
import FakeTimers from "@sinonjs/fake-timers";
import { createActor } from "xstate";
import { alertRuleMachine, type AlertRuleSpec } from "../../actors/alert_rule.ts";
import { threshold } from "../../lib/alert_rules.ts";
import { AlertBook } from "../../lib/alerts.ts";
import { History } from "../../lib/history.ts";

function spec(overrides: Partial<AlertRuleSpec> = {}): AlertRuleSpec {
  return {
    name: "LagHigh",
    severity: "warning",
    summary: "lag is high",
    suggestedActions: ["look"],
    labels: {},
    forMs: 3000,
    keepFiringForMs: 2000,
    evaluate: threshold({
      metric: "lag",
      fn: "value",
      windowMs: 5000,
      op: ">",
      threshold: 10,
      resolveThreshold: 5,
    }),
    ...overrides,
  };
}

/** Runs the rule with fake time, feeding `values[i]` at second i+1; returns the state after each. */
function drive(s: AlertRuleSpec, values: number[]): { states: string[]; book: AlertBook } {
  const clock = FakeTimers.install({ toFake: ["setTimeout", "clearTimeout", "Date"], now: 0 });
  try {
    const history = new History();
    const book = new AlertBook();
    const actor = createActor(alertRuleMachine, {
      input: { spec: s, history, book, intervalMs: 1000 },
    }).start();
    const states: string[] = [];
    for (const v of values) {
      history.record("lag", Date.now() + 1000, v);
      clock.tick(1000);
      const value = actor.getSnapshot().value as { alert: string | Record<string, string> };
      states.push(typeof value.alert === "string" ? value.alert : Object.keys(value.alert)[0]);
    }
    actor.stop();
    return { states, book };
  } finally {
    clock.uninstall();
  }
}

Deno.test("alertRuleMachine goes pending, fires after `for`, and resolves after keep_firing_for", () => {
  const { states, book } = drive(spec(), [1, 20, 20, 20, 20, 2, 2, 2, 2]);
  assert.deepEqual(states, [
    "inactive",
    "pending",
    "pending",
    "pending",
    "firing",
    "firing",
    "firing",
    "resolved",
    "resolved",
  ]);
  const [resolved] = book.resolved();
  assert.equal(resolved.name, "LagHigh");
  assert.equal(resolved.state, "resolved");
  assert.equal(resolved.starts_at, new Date(2000).toISOString());
  assert.equal(resolved.ends_at, new Date(8000).toISOString());
  assert.deepEqual(resolved.suggested_actions, ["look"]);
  assert.equal(resolved.labels.alertname, "LagHigh");
});

Deno.test("alertRuleMachine drops a pending alert whose condition goes away before `for`", () => {
  const { states, book } = drive(spec(), [20, 20, 1, 1]);
  assert.deepEqual(states, ["pending", "pending", "inactive", "inactive"]);
  assert.equal(book.active().length + book.resolved().length, 0);
});

Deno.test("alertRuleMachine does not flap on a value between the resolve threshold and the threshold", () => {
  // 7 is below the threshold (10) but above the resolve threshold (5): still firing.
  const { states } = drive(spec({ forMs: 0, keepFiringForMs: 0 }), [20, 7, 9, 7, 11, 7, 4]);
  assert.deepEqual(states, [
    "firing",
    "firing",
    "firing",
    "firing",
    "firing",
    "firing",
    "resolved",
  ]);
});

Deno.test("alertRuleMachine starts a new alert when a resolved condition comes back", () => {
  const { book } = drive(spec({ forMs: 0, keepFiringForMs: 0 }), [20, 1, 20]);
  assert.equal(book.resolved().length, 1);
  assert.equal(book.active().length, 1);
  assert.notEqual(book.active()[0].id, book.resolved()[0].id);
});
