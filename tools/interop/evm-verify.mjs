// Compiles a Yilian verifier contract with solc, deploys it into an
// in-memory EVM (@ethereumjs/evm, Prague rules, BN254 precompiles) and calls
// verifyProof with the given calldata. Prints `true` or `false` and the gas
// used; exits 0 on either answer, 1 if the contract could not be run.
//
//   node evm-verify.mjs Verifier.sol ContractName calldata.json

import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { createEVM } from '@ethereumjs/evm'
import { bytesToHex, hexToBytes } from '@ethereumjs/util'

const require = createRequire(import.meta.url)
const solc = require('solc')

const [source, name, calldataPath] = process.argv.slice(2)
if (!calldataPath) {
  console.error('usage: node evm-verify.mjs Verifier.sol ContractName calldata.json')
  process.exit(2)
}

const input = {
  language: 'Solidity',
  sources: { 'Verifier.sol': { content: readFileSync(source, 'utf8') } },
  settings: {
    optimizer: { enabled: true, runs: 200 },
    outputSelection: { '*': { '*': ['evm.bytecode.object', 'evm.methodIdentifiers'] } },
  },
}
const output = JSON.parse(solc.compile(JSON.stringify(input)))
const errors = (output.errors ?? []).filter((e) => e.severity === 'error')
if (errors.length > 0) {
  for (const e of errors) console.error(e.formattedMessage)
  process.exit(1)
}
const contract = output.contracts['Verifier.sol'][name]
const selector = Object.entries(contract.evm.methodIdentifiers).find(([sig]) =>
  sig.startsWith('verifyProof('),
)[1]

// Every argument is a static uint256 array: the ABI encoding is the words in order.
const [a, b, c, inputs] = JSON.parse(readFileSync(calldataPath, 'utf8'))
const words = [...a, ...b.flat(), ...c, ...inputs].map((w) => BigInt(w).toString(16).padStart(64, '0'))
const data = hexToBytes(`0x${selector}${words.join('')}`)

const evm = await createEVM()
const deployed = await evm.runCall({ data: hexToBytes(`0x${contract.evm.bytecode.object}`), gasLimit: 30_000_000n })
if (deployed.execResult.exceptionError || !deployed.createdAddress) {
  console.error('deployment failed:', deployed.execResult.exceptionError)
  process.exit(1)
}
const call = await evm.runCall({ to: deployed.createdAddress, data, gasLimit: 30_000_000n })
if (call.execResult.exceptionError) {
  console.error('call reverted:', call.execResult.exceptionError, bytesToHex(call.execResult.returnValue))
  process.exit(1)
}
const answer = BigInt(bytesToHex(call.execResult.returnValue)) === 1n
console.log(`${answer} gas ${call.execResult.executionGasUsed}`)
