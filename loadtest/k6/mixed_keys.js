// A mix of non-streamed and streamed chat completions spread over several virtual keys, the
// shape of a multi-tenant deployment (rate limits per key and tenant apply).
//   k6 run -e BASE_URL=http://127.0.0.1:8080/v1 -e KEYS=sk-a,sk-b,sk-c loadtest/k6/mixed_keys.js
import http from 'k6/http';
import { check } from 'k6';

const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:8080/v1';
const MODEL = __ENV.MODEL || 'gpt-4o-mini';
const KEYS = (__ENV.KEYS || 'sk-demo').split(',');
const STREAM_SHARE = Number(__ENV.STREAM_SHARE || 0.3);

export const options = {
  scenarios: {
    mixed: {
      executor: 'constant-arrival-rate',
      rate: Number(__ENV.RATE || 200),
      timeUnit: '1s',
      duration: __ENV.DURATION || '30s',
      preAllocatedVUs: 50,
      maxVUs: 500,
    },
  },
  thresholds: {
    'http_req_failed{expected_response:true}': ['rate<0.01'],
    'checks': ['rate>0.99'],
  },
};

export default function () {
  const key = KEYS[Math.floor(Math.random() * KEYS.length)];
  const stream = Math.random() < STREAM_SHARE;
  const body = JSON.stringify({
    model: MODEL,
    stream,
    messages: [{ role: 'user', content: 'Say hello.' }],
  });
  const res = http.post(`${BASE_URL}/chat/completions`, body, {
    headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
    responseCallback: http.expectedStatuses(200, 429),
    timeout: '120s',
  });
  check(res, {
    'admitted or rate limited': (r) => r.status === 200 || r.status === 429,
    'a 429 says when to retry': (r) => r.status !== 429 || r.headers['Retry-After'] !== undefined,
  });
}
