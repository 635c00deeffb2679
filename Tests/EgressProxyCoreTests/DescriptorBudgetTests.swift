import EgressLoop
import EgressPosix
@testable import EgressProxyCore
import Testing

@Suite struct DescriptorBudgetTests {
    /// Whatever the limit and loop count, the worst case of every bounded use fits in the limit:
    /// the reserves, two sockets per tunnel, and every loop holding all the pipes it may.
    @Test func everyBoundedUseFitsTheLimit() {
        for limit in [256, 300, 1024, 4096, 65_536, 1_048_576] {
            for loops in [1, 2, 3, 8, 64] {
                let budget = DescriptorBudget(descriptorLimit: limit, loops: loops)
                let reserved = DescriptorBudget.processReserve + DescriptorBudget.adminReserve + DescriptorBudget.perLoop * loops
                guard limit > reserved + DescriptorBudget.perTunnel else { continue }
                let worst = reserved + 2 * budget.tunnelsThatFit + 2 * budget.pipesPerLoop * loops
                #expect(worst <= limit, "limit \(limit), loops \(loops): \(worst)")
                #expect(budget.tunnelsThatFit >= (limit - reserved) / 4 - 1, "the budget is not wasted")
            }
        }
    }

    @Test func theConfiguredCapWinsWhenItIsSmaller() {
        let budget = DescriptorBudget(descriptorLimit: 1_048_576, loops: 2)
        #expect(budget.maxTunnels(configured: 20_000) == 20_000)
        let small = DescriptorBudget(descriptorLimit: 1024, loops: 2)
        #expect(small.maxTunnels(configured: 20_000) == small.tunnelsThatFit)
        #expect(small.tunnelsThatFit < 256)
    }

    @Test func aPipePoolNeverHoldsMoreThanItsCap() {
        let pool = PipePool(capacity: 64 * 1024, maxRetained: 8)
        pool.maxPipes = 3
        var held: [SplicePipe] = []
        for _ in 0..<5 { if let pipe = pool.acquire() { held.append(pipe) } }
        #expect(held.count == 3, "past the cap the tunnel falls back to buffers")
        pool.release(held.removeLast())
        #expect(pool.acquire() != nil, "a released pipe serves again")
        #expect(pool.acquire() == nil)
    }
}
