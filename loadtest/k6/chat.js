// Chat completions, non-streaming, against any OpenAI-compatible base URL.
//   k6 run -e BASE_URL=http://127.0.0.1:8080/v1 -e API_KEY=sk-... loadtest/k6/chat.js
import http from 'k6/http';
import { check } from 'k6';

const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:8080/v1';
const MODEL = __ENV.MODEL || 'gpt-4o-mini';

export const options = {
  scenarios: {
    chat: {
      executor: 'ramping-vus',
      startVUs: 1,
      stages: [
        { duration: '10s', target: 16 },
        { duration: '30s', target: 64 },
        { duration: '10s', target: 0 },
      ],
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.01'],
    http_req_duration: ['p(99)<500'],
  },
};

const params = {
  headers: Object.assign(
    { 'content-type': 'application/json' },
    __ENV.API_KEY ? { authorization: `Bearer ${__ENV.API_KEY}` } : {},
  ),
};

export default function () {
  const body = JSON.stringify({
    model: MODEL,
    messages: [{ role: 'user', content: 'Say hello.' }],
  });
  const res = http.post(`${BASE_URL}/chat/completions`, body, params);
  check(res, {
    'status is 200': (r) => r.status === 200,
    'has choices': (r) => r.status === 200 && r.json('choices.0.message') !== undefined,
  });
}
