// Validate HAR files against the HAR 1.2 schema with har-validator (npm).
// Usage: node validate.js FILE...; prints "ok FILE" per valid file, or the schema's errors
// as JSON on stderr and exits 1.
'use strict'
const fs = require('fs')
const validator = require('har-validator')

async function main (files) {
  let failed = false
  for (const file of files) {
    const data = JSON.parse(fs.readFileSync(file, 'utf8'))
    try {
      await validator.har(data)
      console.log(`ok ${file}`)
    } catch (e) {
      failed = true
      console.error(JSON.stringify({ file, message: e.message, errors: e.errors || [] }))
    }
  }
  process.exit(failed ? 1 : 0)
}

main(process.argv.slice(2)).catch((e) => { console.error(String(e)); process.exit(2) })
