// The Medusa test server's config (lockstep_test_support::medusa writes the environment it
// reads): the local PostgreSQL database the harness created, the admin UI off, no Redis (the
// in-memory event bus, cache and locking modules Medusa falls back to).
const { defineConfig } = require("@medusajs/framework/utils")

module.exports = defineConfig({
  projectConfig: {
    databaseUrl: process.env.DATABASE_URL,
    databaseLogging: false,
    http: {
      storeCors: "http://127.0.0.1",
      adminCors: "http://127.0.0.1",
      authCors: "http://127.0.0.1",
      jwtSecret: process.env.JWT_SECRET || "lockstep-medusa-test-jwt",
      cookieSecret: process.env.COOKIE_SECRET || "lockstep-medusa-test-cookie",
    },
  },
  admin: {
    disable: true,
  },
})
