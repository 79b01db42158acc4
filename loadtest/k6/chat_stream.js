// Chat completions with `stream: true` (SSE). k6 reads the whole stream, so this measures the
// time to the last event (http_req_duration) and checks the stream ends with [DONE].
//   k6 run -e BASE_URL=http://127.0.0.1:8080/v1 loadtest/k6/chat_stream.js
import http from 'k6/http';
import { check } from 'k6';

const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:8080/v1';
const MODEL = __ENV.MODEL || 'gpt-4o-mini';

export const options = {
  vus: Number(__ENV.VUS || 100),
  duration: __ENV.DURATION || '30s',
  thresholds: {
    http_req_failed: ['rate<0.01'],
    checks: ['rate>0.99'],
  },
};

const params = {
  headers: Object.assign(
    { 'content-type': 'application/json', accept: 'text/event-stream' },
    __ENV.API_KEY ? { authorization: `Bearer ${__ENV.API_KEY}` } : {},
  ),
  timeout: '120s',
};

export default function () {
  const body = JSON.stringify({
    model: MODEL,
    stream: true,
    stream_options: { include_usage: true },
    messages: [{ role: 'user', content: 'Count to twenty.' }],
  });
  const res = http.post(`${BASE_URL}/chat/completions`, body, params);
  check(res, {
    'status is 200': (r) => r.status === 200,
    'is event-stream': (r) => (r.headers['Content-Type'] || '').startsWith('text/event-stream'),
    'ends with [DONE]': (r) => typeof r.body === 'string' && r.body.trimEnd().endsWith('data: [DONE]'),
  });
}
