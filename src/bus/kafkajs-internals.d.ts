// The one kafkajs module outside its public API that bosun touches (src/bus/kafkajs-idle.ts); kafkajs ships no types for it.
declare module 'kafkajs/src/network/requestQueue/index.js' {
  const RequestQueue: unknown;
  export default RequestQueue;
}
